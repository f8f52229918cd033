"""GGUF tensors read as they are: each conversion against gguf-py's dequantize of the same bytes,
the model built from a file against transformers' on the same weights, and bad files."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from gguf import quants
from transformers import AutoConfig, PreTrainedModel

from core.engine.model_runner import ModelRunner
from core.errors import ModelLoadError
from core.models import gguf, kernels, loader, pages, quant
from core.models.attention import AttentionMetadata, ChunkContext
from core.models.blocks import FileBlocks, Int4Blocks, Int8Blocks, MixedBlocks, concrete
from core.models.families import read_config
from core.models.gguf import DECODERS, DECODERS_8, GGUFFile
from core.models.gguf_header import TILED_TYPES
from tests.core.models.gguf_files import (
    K_M_TYPES,
    corrupt_copies,
    dequantized_tensors,
    round_trip,
    tiny_llama,
    tiny_qwen2,
    tiny_qwen3,
    unpermute_rows,
    write_tiny_gguf,
)
from tests.core.models.gguf_quants import random_bytes
from tests.core.models.test_blocks import FORMS

VOCAB = 256  # files without a tokenizer: any vocabulary
ROOT = Path(__file__).resolve().parents[3]
PROMPT = torch.tensor([3, 17, 100, 42, 7, 250, 1, 99])


@pytest.fixture(scope="module")
def llama() -> PreTrainedModel:
    return tiny_llama(vocab=VOCAB)


def write(tmp_path: Path, model: PreTrainedModel, qtype: QType,
          embedding: QType | None = None, types: dict[str, QType] | None = None) -> Path:
    path = write_tiny_gguf(tmp_path / f"{qtype.name}.gguf", model, qtype,
                           embedding_type=embedding, with_tokenizer=False, types=types)
    (tmp_path / "config.json").write_text(json.dumps(model.config.to_dict()))
    return path


@pytest.mark.parametrize("qtype", [QType.Q4_0, QType.Q4_1, QType.Q4_K])
def test_4_bit_blocks_are_the_files_weights_exactly(tmp_path: Path, llama: PreTrainedModel,
                                                    qtype: QType) -> None:
    path = write(tmp_path, llama, qtype)
    file, reference = GGUFFile(path), dequantized_tensors(path)
    name = "blk.0.ffn_down.weight"
    assert file.type_of(name) == qtype.name
    blocks = file.blocks(name)
    assert blocks.codes.dtype == torch.uint8 and int(blocks.codes.max()) <= 15
    assert np.array_equal(blocks.dequantize().numpy(), reference[name][1])


EIGHT_BIT = [QType.Q8_0, QType.Q5_0, QType.Q5_1, QType.Q5_K, QType.Q6_K]
FIVE_BIT = [QType.Q5_0, QType.Q5_1, QType.Q5_K]


@pytest.mark.parametrize("qtype", EIGHT_BIT, ids=lambda t: t.name)
def test_8_bit_blocks_are_gguf_pys_dequantize_exactly(qtype: QType) -> None:
    """Q8_0, Q5_0, Q5_1, Q5_K and Q6_K a byte a code, in their own form (FORMS: the codes'
    range, the scales' type and count, minimums or not)."""
    raw = random_bytes(qtype)
    blocks = DECODERS_8[qtype.name](raw)
    low, high, dtype, per, has_mins = FORMS[qtype.name.lower()]
    assert blocks.codes.dtype == torch.int8 and blocks.shape == (6, 512)
    assert (int(blocks.codes.min()), int(blocks.codes.max())) == (low, high)  # all bytes
    assert blocks.scales.dtype == dtype and blocks.scales_per_block == per
    assert (blocks.mins is not None) == has_mins
    assert np.array_equal(blocks.dequantize().numpy(), quants.dequantize(raw, qtype))
    # a Q6_K's own scales come along (the 6-bit kernel reads them): the floats are products
    assert blocks.six_bits == (qtype == QType.Q6_K)
    if blocks.six_bits:
        sub, sup = blocks.sub_scales, blocks.super_scales
        assert sub is not None and sub.dtype == torch.int8 and sub.shape == (6, 32)
        assert sup is not None and sup.dtype == torch.float16 and sup.shape == (6, 2)
        assert torch.equal(sup.float().repeat_interleave(16, dim=1) * sub.float(), blocks.scales)


@pytest.mark.skipif(not kernels.cpu_has_avx2(), reason="the kernels' library needs AVX2")
@pytest.mark.parametrize("qtype", [QType.Q4_K, QType.Q6_K], ids=lambda t: t.name)
def test_the_kernels_decoders_give_the_torch_decoders_very_blocks(
        monkeypatch: pytest.MonkeyPatch, qtype: QType) -> None:
    """gguf_decode.cpp, which decodes where the kernels are built, and the torch decoders
    elsewhere: every field the same, bytes and floats (every bit pattern of codes and scales)."""
    assert kernels.available()
    raw = random_bytes(qtype, rows=5, columns=1024)
    decode = {**DECODERS, **DECODERS_8}[qtype.name]
    assert gguf._built(f"{qtype.name.lower().replace('_', '')}_decode")
    native = decode(raw)
    monkeypatch.setattr(gguf, "_built", lambda op: False)
    plain = decode(raw)
    for field in dataclasses.fields(native):
        got, expected = getattr(native, field.name), getattr(plain, field.name)
        if expected is None:  # Q6_K: no minimums
            assert got is None, field.name
            continue
        assert got.dtype == expected.dtype and torch.equal(got, expected), field.name
    assert np.array_equal(native.dequantize().numpy(), quants.dequantize(raw, qtype))


@pytest.mark.skipif(not kernels.cpu_has_avx2(), reason="the kernels' library needs AVX2")
@pytest.mark.parametrize("qtype", [QType.Q4_0, QType.Q4_1, QType.Q4_K, QType.Q8_0, QType.Q6_K],
                         ids=lambda t: t.name)
def test_tiles_written_from_the_files_bytes_are_the_layers_own_tiling(qtype: QType) -> None:
    """gguf_tiles (gguf_decode.cpp) writes a fused projection's parts straight into the
    kernel's layout: the very tensors the layer makes of the decoded blocks (concatenated, the
    second part's rows reordered as a query's are, 17 rows: a last tile of one row and 7 of
    padding), and the weights are gguf-py's dequantize of the same bytes."""
    assert kernels.available()
    first, second = random_bytes(qtype, rows=11), random_bytes(qtype, rows=6)[::-1].copy()
    order = torch.tensor([3, 0, 4, 1, 5, 2])
    kind = qtype.name
    tiles = gguf._tiles(kind, [first, second], [None, order], (17, 512))
    four = kind in DECODERS
    decode = DECODERS[kind] if four else DECODERS_8[kind]
    blocks = [decode(first), decode(second).rows(order)]
    if four:
        made: torch.nn.Module = quant.Int4Linear(Int4Blocks.cat(blocks), None, own_kernel=True)
        taken: torch.nn.Module = quant.Int4Linear(tiles, None, own_kernel=True)
    else:
        made = quant.Int8BlockLinear(Int8Blocks.cat(blocks), None)
        taken = quant.Int8BlockLinear(tiles, None)
    for name in ("codes", "scales", "mins", "sub_scales", "super_scales"):
        want, got = getattr(made, name, None), getattr(taken, name, None)
        assert (want is None) == (got is None), name
        if want is not None:
            assert got.dtype == want.dtype and torch.equal(got, want), name
    rows = np.concatenate([first, second[order.numpy()]])
    assert np.array_equal(taken.dequantized().numpy(), quants.dequantize(rows, qtype))


@pytest.mark.skipif(not kernels.cpu_has_avx2(), reason="the kernels' library needs AVX2")
@pytest.mark.parametrize("qtype", FIVE_BIT, ids=lambda t: t.name)
def test_5_bit_tiles_hold_the_files_weights_and_compute_as_the_8_bit_kernel(
        qtype: QType) -> None:
    """Q5_0, Q5_1 and Q5_K written by gguf_tiles in 5 bits a code (the fifth bits beside the
    nibbles, the file's own scales): the weights are gguf-py's dequantize of the same bytes,
    the rows read back are the decoder's blocks, and q5_matmul / q5k_matmul give, bit for bit,
    what q8_matmul gives from those blocks a byte a code (1, 3, 4 and 9 rows: both paths)."""
    assert kernels.available()
    first, second = random_bytes(qtype, rows=11), random_bytes(qtype, rows=6)[::-1].copy()
    order = torch.tensor([3, 0, 4, 1, 5, 2])
    tiles = gguf._tiles(qtype.name, [first, second], [None, order], (17, 512))
    five = quant.Int8BlockLinear(tiles, None)
    assert five.kernel == ("q5k" if qtype == QType.Q5_K else "q5")
    assert five.codes.shape == (3, 16, 160)
    rows = np.concatenate([first, second[order.numpy()]])
    assert np.array_equal(five.dequantized().numpy(), quants.dequantize(rows, qtype))
    decode = DECODERS_8[qtype.name]
    decoded = Int8Blocks.cat([decode(first), decode(second).rows(order)])
    picked = torch.tensor([16, 0, 9, 3])
    for got, want in [(five.blocks(), decoded), (five.blocks(picked), decoded.rows(picked))]:
        for name in ("codes", "scales", "mins"):
            g, w = getattr(got, name), getattr(want, name)
            assert (g is None) == (w is None), name
            assert g is None or (g.dtype == w.dtype and torch.equal(g, w)), name
    # the same tiles as the decoded blocks packed in 5 bits (int5's packing, in torch)
    assert torch.equal(quant.Int8BlockLinear(decoded, None, five_bits=True).codes, five.codes)
    eight = quant.Int8BlockLinear(decoded, None)
    assert eight.kernel == "q8"
    torch.manual_seed(0)
    for count in (1, 3, 4, 9):
        x = torch.randn(count, 512) * 3
        assert torch.equal(five(x), eight(x)), count


def test_a_projection_is_written_into_its_tiles_only_where_the_kernels_run(
        tmp_path: Path, llama: PreTrainedModel) -> None:
    """With the kernels a Q4_K file's projection comes undecoded (a layer on a kernel takes its
    tiles); decoded, or without them, it is the file's blocks."""
    path = write(tmp_path, llama, QType.Q4_K)
    file, reference = GGUFFile(path), dequantized_tensors(path)
    names = ["blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"]
    weight = file.linear(names, [None, None])
    want = np.concatenate([reference[name][1] for name in names])
    assert isinstance(weight, FileBlocks) == gguf._built("gguf_tiles")
    assert isinstance(weight, FileBlocks | Int4Blocks) and weight.shape == want.shape
    assert np.array_equal(concrete(weight).dequantize().numpy(), want)


@pytest.mark.parametrize("qtype", [QType.Q4_K, *EIGHT_BIT], ids=lambda t: t.name)
def test_a_big_tensor_decodes_a_chunk_of_rows_at_a_time_to_the_same_blocks(
        monkeypatch: pytest.MonkeyPatch, qtype: QType) -> None:
    """Bounded temporaries, same blocks: 7 rows in chunks of 2 (and a last of 1)."""
    raw = random_bytes(qtype, rows=7)
    decode = {**DECODERS, **DECODERS_8}[qtype.name]
    whole = decode(raw)
    monkeypatch.setattr(gguf, "DECODE_CHUNK_BYTES", 2 * raw.shape[1])
    chunked = gguf._decoded(decode, raw)
    for name in ("scales", "mins", "codes" if qtype in EIGHT_BIT else "packed", "sub_scales",
                 "super_scales"):
        expected, got = getattr(whole, name), getattr(chunked, name)
        assert (got is None) == (expected is None)
        if expected is not None:
            assert got.dtype == expected.dtype and torch.equal(got, expected)


@pytest.mark.parametrize("qtype", [*EIGHT_BIT, QType.F16, QType.BF16, QType.F32])
def test_other_types_read_as_gguf_py_dequantizes_them(tmp_path: Path, llama: PreTrainedModel,
                                                      qtype: QType) -> None:
    path = write(tmp_path, llama, qtype)
    file, reference = GGUFFile(path), dequantized_tensors(path)
    for name in ("blk.1.attn_output.weight", "blk.0.ffn_gate.weight", "output_norm.weight"):
        assert np.array_equal(file.tensor(name).numpy(), reference[name][1]), name


@pytest.mark.parametrize("make", [tiny_llama, tiny_qwen2, tiny_qwen3])
def test_the_config_from_the_header_is_transformers_own(tmp_path: Path, make: type) -> None:
    model = make(vocab=VOCAB)
    path = write(tmp_path, model, QType.Q4_0)
    ours = read_config(GGUFFile(path).hf_config())[1]
    theirs = AutoConfig.from_pretrained(str(tmp_path), gguf_file=path.name).to_dict()
    assert ours == replace(read_config(theirs)[1], eos_token_ids=ours.eos_token_ids)
    assert ours == replace(read_config(model.config.to_dict())[1],
                           rms_norm_eps=ours.rms_norm_eps, eos_token_ids=ours.eos_token_ids)


def logits(model: torch.nn.Module, runner: ModelRunner | None = None) -> torch.Tensor:
    """The last prompt token's logits, from transformers' model or from a runner's."""
    with torch.inference_mode():
        if runner is None:
            return model(PROMPT[None]).logits[0, -1].float()
        n = len(PROMPT)
        meta = AttentionMetadata(torch.arange(16, 16 + n), [ChunkContext(n)])
        hidden = runner.model(PROMPT, torch.arange(n), meta)
        return runner.model.logits(hidden[-1:])[0]


def tiny_llama3(vocab: int) -> PreTrainedModel:
    """Llama 3.1's rope scaling, which a GGUF holds as ``rope_freqs`` (a divisor a frequency)."""
    return tiny_llama(vocab=vocab, rope={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64, "rope_theta": 500000.0})


@pytest.mark.parametrize(("make", "qtype", "embedding"), [
    (tiny_llama, QType.Q4_0, None), (tiny_llama, QType.Q4_K, QType.F16),
    (tiny_llama3, QType.F32, None), (tiny_qwen3, QType.Q4_0, None),
    (tiny_llama, QType.Q8_0, None), (tiny_llama, QType.Q6_K, QType.Q8_0),
    (tiny_qwen2, QType.Q4_1, QType.F32), (tiny_qwen2, QType.Q5_K, None),
])
def test_a_float_model_from_the_file_equals_transformers_on_the_same_weights(
        tmp_path: Path, make: type, qtype: QType, embedding: QType | None) -> None:
    """Names, llama.cpp's rotary row order and fused projections come out right: float32
    logits within 1e-4 of transformers' model holding the file's dequantized weights."""
    model = make(vocab=VOCAB)
    path = write(tmp_path, model, qtype, embedding)
    runner = ModelRunner(tmp_path, quantization="none", gguf=path, kv_cache_tokens=64,
                         decode_graphs=False)
    expected = logits(round_trip(model, qtype, embedding))
    assert torch.allclose(logits(None, runner), expected, atol=1e-4, rtol=1e-4)  # type: ignore[arg-type]


@pytest.mark.parametrize("qtype", [QType.Q4_0, QType.Q4_1, QType.Q4_K])
def test_a_4_bit_file_runs_as_its_own_blocks(tmp_path: Path, llama: PreTrainedModel,
                                             qtype: QType) -> None:
    """--isq auto is the file's own format: the 4-bit layers hold the file's weights exactly;
    the logits move by the kernel's int8 activations only (within a tenth of the largest logit:
    these random weights amplify rounding far more than a trained model's)."""
    path = write(tmp_path, llama, qtype)
    runner = ModelRunner(tmp_path, quantization="auto", gguf=path, kv_cache_tokens=64,
                         decode_graphs=False)
    assert runner.quantization == "int4"
    layer = runner.model.layers[1].mlp.down_proj
    assert isinstance(layer, quant.Int4Linear)
    weight = layer.dequantized() if layer.codes is not None else None
    tensors = dequantized_tensors(path)
    if weight is not None:  # the AVX2 kernel's layout
        assert np.array_equal(weight.numpy(), tensors["blk.1.ffn_down.weight"][1])
        # Q4_K's scales stay as the file holds them (6-bit codes), not as float32 products
        assert bool(layer.sub_scales.numel()) == (qtype == QType.Q4_K)
    embedding = runner.model.embed_tokens  # stays 4-bit; its rows are the file's exactly
    assert isinstance(embedding, quant.Int4Embedding)
    assert np.array_equal(embedding(PROMPT).numpy(),
                          tensors["token_embd.weight"][1][PROMPT.numpy()])
    expected = logits(round_trip(llama, qtype))
    got = logits(None, runner)  # type: ignore[arg-type]
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()


# how far the logits of a file in its own format may move, in parts of the largest: by the
# kernels' int8 activations only (these random weights amplify rounding far more than a trained
# model's); without the kernels the 8-bit blocks go through float32 into fbgemm's int8 or the
# model's int4, lossy
OWN_FORMAT_TOLERANCE = {True: 0.1, False: 0.25}
KERNEL_OF = {QType.Q8_0: "q8", QType.Q5_0: "q5", QType.Q5_1: "q5", QType.Q5_K: "q5k",
             QType.Q6_K: "q6"}


@pytest.mark.parametrize("qtype", EIGHT_BIT, ids=lambda t: t.name)
def test_an_8_bit_blocks_file_runs_as_its_own_blocks(tmp_path: Path, llama: PreTrainedModel,
                                                     qtype: QType) -> None:
    """Q8_0, Q5_0, Q5_1, Q5_K, Q6_K: codes and scales (and minimums) as they are, on their
    kernels (where they are built: Q5_x on the 5-bit ones, Q6_K on the 6-bit one): its layers
    and token table hold the file's weights exactly."""
    path = write(tmp_path, llama, qtype)
    runner = ModelRunner(tmp_path, quantization="auto", gguf=path, kv_cache_tokens=64,
                         decode_graphs=False)
    # the format of its kernels: int5 for the 5-bit types, which run as int8 without them
    five_bits = qtype in FIVE_BIT and runner.own_kernels
    assert runner.quantization == ("int5" if five_bits else "int8")
    tensors = dequantized_tensors(path)
    embedding = runner.model.embed_tokens
    assert isinstance(embedding, quant.Int8Embedding)
    assert np.array_equal(embedding(PROMPT).numpy(),
                          tensors["token_embd.weight"][1][PROMPT.numpy()])
    down, gate_up = runner.model.layers[1].mlp.down_proj, runner.model.layers[0].mlp.gate_up_proj
    if runner.own_kernels:  # tied to the head on the kernel: one copy of the table
        assert isinstance(runner.model.lm_head, quant.Int8BlockLinear)
        assert embedding.codes is runner.model.lm_head.codes
        for layer, weight in [(down, tensors["blk.1.ffn_down.weight"][1]), (gate_up, np.concatenate(
                [tensors[f"blk.0.ffn_{n}.weight"][1] for n in ("gate", "up")]))]:
            assert isinstance(layer, quant.Int8BlockLinear)
            assert layer.kernel == KERNEL_OF[qtype]
            assert np.array_equal(layer.dequantized().numpy(), weight)
    expected = logits(round_trip(llama, qtype))
    got = logits(None, runner)  # type: ignore[arg-type]
    tolerance = OWN_FORMAT_TOLERANCE[runner.own_kernels]
    assert (got - expected).abs().max() < tolerance * expected.abs().max()


@pytest.fixture(scope="module")
def untied_llama() -> PreTrainedModel:
    return tiny_llama(vocab=VOCAB, tie=False)


def test_a_projection_fused_of_4_and_6_bit_parts_is_their_weights_exactly(
        tmp_path: Path, untied_llama: PreTrainedModel) -> None:
    path = write(tmp_path, untied_llama, QType.Q4_K, types=K_M_TYPES)
    file, tensors = GGUFFile(path), dequantized_tensors(path)
    names = [f"blk.0.attn_{n}.weight" for n in "qkv"]
    assert [file.type_of(name) for name in names] == ["Q4_K", "Q4_K", "Q6_K"]
    fused = file.linear(names, [None, None, None])
    # each run of alike parts in its own form: the 4-bit query and key, the 6-bit value
    assert isinstance(fused, MixedBlocks) and fused.shape == (sum(
        tensors[name][1].shape[0] for name in names), tensors[names[0]][1].shape[1])
    four, six = (concrete(part) for part in fused.parts)  # decoded if not yet
    assert isinstance(four, quant.Int4Blocks) and isinstance(six, quant.Int8Blocks)
    assert six.six_bits
    want = np.concatenate([tensors[name][1] for name in names])
    assert np.array_equal(fused.dequantize().numpy(), want)
    merged = fused.merged()  # one 8-bit form, where the parts cannot run apart
    assert merged.scales_per_block == 2 and np.array_equal(merged.dequantize().numpy(), want)


def test_a_q4_k_m_file_runs_each_tensor_as_the_file_holds_it(
        tmp_path: Path, untied_llama: PreTrainedModel) -> None:
    """Q4_K tensors on the 4-bit kernel, Q6_K ones (layer 0's value and down projections, the
    output) on the 6-bit kernel, exactly the file's; layer 0's query and key on the 4-bit kernel
    beside its value. The format shown is the file's main one, int4."""
    path = write(tmp_path, untied_llama, QType.Q4_K, types=K_M_TYPES)
    # float32 keys and values, as transformers keeps them: re-quantized to float32 below, the
    # logits are transformers' to 1e-4
    runner = ModelRunner(tmp_path, quantization="auto", gguf=path, kv_cache_tokens=64,
                         decode_graphs=False, kv_cache_dtype="float32")
    assert runner.quantization == "int4"
    first, second = runner.model.layers[0], runner.model.layers[1]
    assert isinstance(first.mlp.gate_up_proj, quant.Int4Linear)
    assert isinstance(second.self_attn.qkv_proj, quant.Int4Linear)
    assert isinstance(runner.model.embed_tokens, quant.Int4Embedding)  # token_embd: Q4_K
    if runner.own_kernels:  # else the Q6_K tensors go through float32 into int4
        tensors = dequantized_tensors(path)
        config = untied_llama.config
        qkv = [unpermute_rows(tensors["blk.0.attn_q.weight"][1], config.num_attention_heads),
               unpermute_rows(tensors["blk.0.attn_k.weight"][1], config.num_key_value_heads),
               tensors["blk.0.attn_v.weight"][1]]
        qk, v = first.self_attn.qkv_proj.parts
        assert isinstance(qk, quant.Int4Linear)
        assert np.array_equal(qk.dequantized().numpy(), np.concatenate(qkv[:2]))
        for layer, weight in [(v, qkv[2]),
                              (first.mlp.down_proj, tensors["blk.0.ffn_down.weight"][1]),
                              (runner.model.lm_head, tensors["output.weight"][1])]:
            assert isinstance(layer, quant.Int8BlockLinear) and layer.super_scales.numel()
            assert np.array_equal(layer.dequantized().numpy(), weight)
    expected = logits(round_trip(untied_llama, QType.Q4_K, types=K_M_TYPES))
    got = logits(None, runner)  # type: ignore[arg-type]
    tolerance = OWN_FORMAT_TOLERANCE[runner.own_kernels]
    assert (got - expected).abs().max() < tolerance * expected.abs().max()
    runner.quantize("none")  # float32: transformers' logits on the file's weights
    assert torch.allclose(logits(None, runner), expected, atol=1e-4, rtol=1e-4)  # type: ignore[arg-type]
    runner.quantize("int8")  # another format: the 4-bit tensors convert, 8-bit ones stay
    assert isinstance(runner.model.layers[1].mlp.down_proj, quant.Int8Linear)
    if runner.own_kernels:
        assert isinstance(runner.model.layers[0].mlp.down_proj, quant.Int8BlockLinear)


def test_other_formats_convert_from_the_file(tmp_path: Path, llama: PreTrainedModel) -> None:
    path = write(tmp_path, llama, QType.Q8_0)
    runner = ModelRunner(tmp_path, quantization="auto", gguf=path, kv_cache_tokens=64,
                         decode_graphs=False)
    assert runner.quantization == "int8"
    runner.quantize("int4")  # /re_isq: from the file again
    assert runner.quantization == "int4"
    assert isinstance(runner.model.layers[0].self_attn.qkv_proj, quant.Int4Linear)


def test_the_file_is_not_mapped_once_loaded(tmp_path: Path, llama: PreTrainedModel) -> None:
    path = write(tmp_path, llama, QType.Q4_1)
    ModelRunner(tmp_path, quantization="auto", gguf=path, kv_cache_tokens=64,
                decode_graphs=False)
    assert str(path) not in Path("/proc/self/maps").read_text()


@pytest.mark.parametrize(("kind", "reason"), [
    ("truncated", "truncated"), ("bad_magic", "not a GGUF file"),
    ("unknown_type", "unknown quantization type 31420"),
])
def test_a_bad_file_is_one_load_error_naming_it(tmp_path: Path, llama: PreTrainedModel,
                                                kind: str, reason: str) -> None:
    bad = corrupt_copies(write(tmp_path, llama, QType.Q4_0), tmp_path / "bad")[kind]
    with pytest.raises(ModelLoadError, match=reason) as info:
        GGUFFile(bad)
    assert str(bad) in info.value.message and "\n" not in info.value.message


PEAK = """
import sys
from pathlib import Path
from core.engine.model_runner import ModelRunner
def kib(field):  # VmHWM, the peak, is this process's own (ru_maxrss keeps the parent's)
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
before = kib("VmRSS")
runner = ModelRunner(Path(sys.argv[1]).parent, gguf=Path(sys.argv[1]), quantization="auto",
                     kv_cache_tokens=64, decode_graphs=False)
print((kib("VmHWM") - before) * 1024, runner.quantization)
"""


@pytest.mark.e2e  # a process of its own loads torch and a whole model
def test_loading_a_4_bit_file_grows_memory_by_about_its_size(tmp_path: Path) -> None:
    """A Q4_0 file of 134M parameters (65 MiB; 512 MiB in float32), served in its own format:
    the peak grows by at most the file's size plus 96 MiB (torch's and the kernels' first use,
    one fused projection read and tiled). 107 MiB here: the file is read, not mapped, and its
    4-bit token table stays 4-bit; a whole model in float32 would be 512 MiB."""
    model = tiny_llama(hidden=1024, intermediate=4096, layers=8, heads=16, kv_heads=4,
                       vocab=VOCAB)
    path = write(tmp_path, model, QType.Q4_0)
    del model
    size = path.stat().st_size
    result = subprocess.run([sys.executable, "-c", PEAK, str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    grown, quantization = result.stdout.split()
    assert quantization == "int4"
    assert int(grown) < size + (96 << 20), f"grew {int(grown) >> 20} MiB for {size >> 20} MiB"


def test_a_load_cuts_its_tiles_from_a_reserve_and_gives_back_the_rest(
        tmp_path: Path, llama: PreTrainedModel) -> None:
    """What a server reserves before its imports (core.models.pages) for a file in its own
    format: about the file's bytes in blocks; the load's tiles are cut from it, to the same
    logits as in memory of their own, and the load ends it."""
    path = write(tmp_path, llama, QType.Q4_K, types={"blk.0.ffn_down.weight": QType.Q6_K})
    assert set(gguf.TILE_KERNELS) == set(TILED_TYPES)  # what the reserve counts (no torch)
    tiled = loader.tiled_bytes(str(path))
    assert tiled == int(sum(info.nbytes * {"Q4_K": 148 / 144, "Q6_K": 1}.get(info.type_name, 0)
                            for info in GGUFFile(path)._tensors.values()))
    plain = ModelRunner(tmp_path, quantization="auto", gguf=path, kv_cache_tokens=64,
                        decode_graphs=False)
    pages.reserve(tiled + 2 * pages.HUGE_PAGE)
    reserve = pages._reserve
    assert reserve is not None
    runner = ModelRunner(tmp_path, quantization="auto", gguf=path, kv_cache_tokens=64,
                         decode_graphs=False)
    assert pages._reserve is None  # ended by the load
    cut = reserve.close()
    assert tiled <= cut <= tiled + 64 * 200  # and cache lines between tensors
    for layer in runner.model.layers[0].mlp.down_proj, runner.model.layers[1].mlp.down_proj:
        address = layer.codes.data_ptr()  # 6-bit tiles, then 4-bit ones
        assert reserve._address <= address < reserve._address + reserve._end
    assert torch.equal(logits(None, runner), logits(None, plain))  # type: ignore[arg-type]


def test_a_token_table_beside_a_head_of_its_own_is_not_reserved(
        tmp_path: Path, untied_llama: PreTrainedModel) -> None:
    """Its rows are looked up in blocks, not tiles: reserved, its bytes would be faulted in
    for nothing (an 8B file's table: 113 MB more at the load's peak)."""
    path = write(tmp_path, untied_llama, QType.Q4_0)
    tiled = loader.tiled_bytes(str(path))
    assert tiled == sum(info.nbytes for name, info in GGUFFile(path)._tensors.items()
                        if info.type_name == "Q4_0" and name != "token_embd.weight")
    pages.reserve(max(tiled, pages.HUGE_PAGE))  # a reserve's least
    reserve = pages._reserve
    assert reserve is not None
    ModelRunner(tmp_path, quantization="auto", gguf=path, kv_cache_tokens=64,
                decode_graphs=False)
    assert tiled <= reserve.close() <= tiled + 64 * 200  # every tile from it, cache lines
