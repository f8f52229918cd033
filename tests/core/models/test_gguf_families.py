"""GGUF files of every family as llama.cpp's converter writes them (gemma2, gemma3, phi3,
granite, olmo2, qwen3moe): the config their header describes is the one transformers' config
gives, the model built from them computes transformers' logits, and expert tensors are read one
expert at a time in their own blocks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from transformers import PreTrainedModel

from core.engine.model_runner import ModelRunner
from core.errors import ModelLoadError
from core.models import quant
from core.models.attention import AttentionMetadata, ChunkContext
from core.models.blocks import FileBlocks, Int4Blocks, Int8Blocks
from core.models.families import GGUF_ARCHITECTURES, SUPPORTED_MODEL_TYPES, read_config
from core.models.gguf import GGUFFile
from core.models.layers import SparseMoE
from core.models.loader import gguf_metadata
from tests.core.models.gguf_files import (
    AS_LLAMA_CPP,
    dequantized_tensors,
    quantize,
    round_trip,
    tiny_family,
    write_tiny_gguf,
)
from tests.core.models.test_families import build

VOCAB = 256  # files without a tokenizer: any vocabulary
# longer than the builders' sliding windows (6): the sliding layers drop their oldest keys
PROMPT = torch.tensor([3, 17, 100, 42, 7, 250, 1, 99, 12, 64, 5, 200, 31, 8])
FAMILIES = list(AS_LLAMA_CPP)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> tuple[str, PreTrainedModel]:
    return request.param, tiny_family(request.param, VOCAB)


def write(folder: Path, model: PreTrainedModel, qtype: QType) -> Path:
    """The file, and beside it the config.json its header describes (as the server writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = write_tiny_gguf(folder / f"{qtype.name}.gguf", model, qtype, with_tokenizer=False)
    (folder / "config.json").write_text(json.dumps(GGUFFile(path).hf_config()))
    return path


def flat(config: Any) -> dict[str, Any]:
    """A ModelConfig's fields, its rope scaling's among them, each tuple's items apart."""
    out: dict[str, Any] = {}
    for name, value in dataclasses.asdict(config).items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for sub, item in items:
            if isinstance(item, tuple):
                out |= {f"{name}.{sub}.{i}": v for i, v in enumerate(item)}
            else:
                out[f"{name}.{sub}"] = item
    return out


def test_the_header_config_is_transformers_own(tmp_path: Path,
                                               family: tuple[str, PreTrainedModel]) -> None:
    """Equal field by field (to float32's precision, in which the file keeps numbers), but the
    end-of-text ids, which live in a tokenizer (none in these files)."""
    name, model = family
    ours = read_config(GGUFFile(write(tmp_path, model, QType.F32)).hf_config())[1]
    theirs = read_config(model.config.to_dict())[1]
    assert ours.model_type == theirs.model_type == name
    ours, theirs = flat(dataclasses.replace(ours, eos_token_ids=theirs.eos_token_ids)), \
        flat(theirs)
    floats = {k for k, v in theirs.items() if isinstance(v, float)}
    assert {k: v for k, v in ours.items() if k not in floats} == \
        {k: v for k, v in theirs.items() if k not in floats}
    assert {k: ours[k] for k in floats} == pytest.approx({k: theirs[k] for k in floats},
                                                         rel=1e-6)


def logits(model: PreTrainedModel | None, runner: ModelRunner | None = None) -> torch.Tensor:
    """Every prompt position's logits, from transformers' model or from a runner's."""
    with torch.inference_mode():
        if runner is None:
            assert model is not None
            return model(PROMPT[None]).logits[0].float()
        n = len(PROMPT)
        meta = AttentionMetadata(torch.arange(16, 16 + n), [ChunkContext(n)])
        return runner.model.logits(runner.model(PROMPT, torch.arange(n), meta))


def runner(folder: Path, path: Path, quantization: str = "none") -> ModelRunner:
    """A runner on the file; its KV cache holds float32 whatever the weights' format, so that
    re-quantized to float32 its logits are transformers' to 1e-4."""
    return ModelRunner(folder, quantization=quantization, gguf=path, kv_cache_tokens=64,
                       decode_graphs=False, kv_cache_dtype="float32")


@pytest.mark.parametrize("qtype", [QType.F32, QType.F16])
def test_a_float_model_from_the_file_computes_transformers_logits(
        tmp_path: Path, family: tuple[str, PreTrainedModel], qtype: QType) -> None:
    """Names, row orders, fused and expert tensors, norms and every config number come out
    right: float32 logits at every position within 1e-4 of transformers' model holding the
    file's weights."""
    _, model = family
    path = write(tmp_path, model, qtype)
    got = logits(None, runner(tmp_path, path))
    assert torch.allclose(got, logits(round_trip(model, qtype)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("qtype", "layer"), [(QType.Q4_0, quant.Int4Linear),
                                              (QType.Q8_0, quant.Int8BlockLinear)])
def test_a_quantized_mixture_of_experts_runs_its_experts_as_the_file_holds_them(
        tmp_path: Path, qtype: QType, layer: type) -> None:
    """--isq auto: each expert's projections on the kernel of the file's type, holding its
    slice of the 3-D tensors exactly; in float32 the logits are transformers' on the file's
    weights."""
    model = tiny_family("qwen3_moe", VOCAB)
    path = write(tmp_path, model, qtype)
    served = runner(tmp_path, path, "auto")
    moe = served.model.layers[0].mlp
    assert isinstance(moe, SparseMoE)
    tensors = dequantized_tensors(path)
    for expert in (0, 5):
        gate_up, down = moe.experts[expert].gate_up_proj, moe.experts[expert].down_proj
        if not served.own_kernels:  # no 4-bit/8-bit kernel here: converted to the format's
            break
        assert isinstance(gate_up, layer) and isinstance(down, layer)
        want = np.concatenate([tensors["blk.0.ffn_gate_exps.weight"][1][expert],
                               tensors["blk.0.ffn_up_exps.weight"][1][expert]])
        assert np.array_equal(gate_up.dequantized().numpy(), want)
        assert np.array_equal(down.dequantized().numpy(),
                              tensors["blk.0.ffn_down_exps.weight"][1][expert])
    served.quantize("none")
    assert torch.allclose(logits(None, served), logits(round_trip(model, qtype)), atol=1e-4,
                          rtol=1e-4)


def expert_file(path: Path, types: dict[str, QType]) -> dict[str, np.ndarray]:
    """A GGUF of 3-D (experts, rows, columns) tensors of ``types``; their float32 values."""
    writer = gguf.GGUFWriter(path, "qwen3moe")
    rng = np.random.default_rng(0)
    values = {}
    for name, qtype in types.items():
        array = rng.standard_normal((4, 6, 512)).astype(np.float32)
        writer.add_tensor(name, quantize(array, qtype), raw_dtype=qtype)
        values[name] = array
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return values


@pytest.mark.parametrize(("types", "form"), [
    ((QType.Q4_0, QType.Q4_0), Int4Blocks), ((QType.Q4_K, QType.Q4_1), Int4Blocks),
    ((QType.Q4_K, QType.Q4_K), Int4Blocks), ((QType.Q6_K, QType.Q6_K), Int8Blocks),
    ((QType.Q8_0, QType.Q6_K), Int8Blocks), ((QType.Q4_K, QType.Q6_K), Int8Blocks),
    ((QType.F16, QType.F32), torch.Tensor), ((QType.Q5_0, QType.BF16), torch.Tensor)],
    ids=lambda v: "-".join(t.name for t in v) if isinstance(v, tuple) else v.__name__)
def test_one_experts_slice_is_read_in_the_forms_linear_gives(
        tmp_path: Path, types: tuple[QType, QType], form: type) -> None:
    """Gate and up of expert e, rows one after another: 4-bit blocks when both are 4-bit,
    8-bit blocks when both are in blocks, else float32; equal to gguf-py's dequantize of the
    whole tensor, sliced. Parts of one type stay as the file holds them, and their tiles,
    written from the expert's bytes alone, hold the same weights."""
    path = tmp_path / "experts.gguf"
    expert_file(path, {"gate.weight": types[0], "up.weight": types[1]})
    file, reference = GGUFFile(path), dequantized_tensors(path)
    for expert in range(4):
        weight = file.expert_linear(["gate.weight", "up.weight"], expert)
        want = np.concatenate([reference["gate.weight"][1][expert],
                               reference["up.weight"][1][expert]])
        if isinstance(weight, FileBlocks):
            assert types[0] == types[1] and weight.form is form
            tiled = weight.tiles()
            layer = quant.Int4Linear(tiled, None, own_kernel=True) if form is Int4Blocks \
                else quant.Int8BlockLinear(tiled, None)
            assert np.array_equal(layer.dequantized().numpy(), want)
            weight = weight.decoded()
        assert isinstance(weight, form)
        floats = weight if isinstance(weight, torch.Tensor) else weight.dequantize()
        assert np.array_equal(floats.numpy(), want)
    with pytest.raises(ModelLoadError, match="no expert 4"):
        file.expert_linear(["gate.weight"], 4)


def test_every_gguf_architecture_is_a_family(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """And another is one load error listing the supported ones."""
    assert {"gemma2", "gemma3", "phi3", "granite", "olmo2", "qwen3moe"} <= set(GGUF_ARCHITECTURES)
    assert set(GGUF_ARCHITECTURES.values()) <= set(SUPPORTED_MODEL_TYPES)
    monkeypatch.setenv("INFERMCP_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "falcon.gguf"
    expert_file(path, {"token_embd.weight": QType.F32})
    raw = path.read_bytes()  # the architecture renamed, same length: still a valid file
    path.write_bytes(raw.replace(b"qwen3moe", b"falcon40", 1))
    with pytest.raises(ModelLoadError, match="'falcon40' is not supported; supported: llama, "
                       "qwen2, qwen3, gemma2, gemma3, phi3, granite, olmo2, qwen3moe"):
        gguf_metadata(path)


def test_an_olmo_3_file_is_one_load_error(tmp_path: Path) -> None:
    """llama.cpp's olmo2 architecture holds OLMo 3 too: a sliding window says which."""
    model = build("olmo2", VOCAB, sliding_window=6)
    path = write_tiny_gguf(tmp_path / "olmo3.gguf", model, QType.F32, with_tokenizer=False)
    assert GGUFFile(path).metadata["olmo2.attention.sliding_window_pattern"] == (True, True)
    with pytest.raises(ModelLoadError, match=r"sliding window \(OLMo 3\) is not supported"):
        GGUFFile(path).hf_config()


def test_short_metadata_arrays_are_read_and_long_ones_skipped(tmp_path: Path) -> None:
    """A flag a layer (llama.cpp's sliding window pattern) is read; a tokenizer's arrays are
    not."""
    path = tmp_path / "arrays.gguf"
    writer = gguf.GGUFWriter(path, "gemma3")
    writer.add_sliding_window_pattern([True, False, True])
    writer.add_array("tokenizer.ggml.token_type", list(range(5000)))
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    metadata = GGUFFile(path).metadata
    assert metadata["gemma3.attention.sliding_window_pattern"] == (True, False, True)
    assert metadata["tokenizer.ggml.token_type"] is None
