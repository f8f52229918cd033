"""GGUF tensors read as they are: each conversion against gguf-py's dequantize of the same bytes,
the model built from a file against transformers' on the same weights, and bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from transformers import AutoConfig, PreTrainedModel

from core.engine.model_runner import ModelRunner
from core.errors import ModelLoadError
from core.models import quant
from core.models.attention import AttentionMetadata, ChunkContext
from core.models.families import read_config
from core.models.gguf import GGUFFile
from tests.core.models.gguf_files import (
    corrupt_copies,
    dequantized_tensors,
    round_trip,
    tiny_llama,
    tiny_qwen2,
    tiny_qwen3,
    write_tiny_gguf,
)

VOCAB = 256  # files without a tokenizer: any vocabulary
ROOT = Path(__file__).resolve().parents[3]
PROMPT = torch.tensor([3, 17, 100, 42, 7, 250, 1, 99])


@pytest.fixture(scope="module")
def llama() -> PreTrainedModel:
    return tiny_llama(vocab=VOCAB)


def write(tmp_path: Path, model: PreTrainedModel, qtype: QType,
          embedding: QType | None = None) -> Path:
    path = write_tiny_gguf(tmp_path / f"{qtype.name}.gguf", model, qtype,
                           embedding_type=embedding, with_tokenizer=False)
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


@pytest.mark.parametrize("qtype", [QType.Q8_0, QType.Q5_0, QType.Q5_1, QType.Q5_K, QType.Q6_K,
                                   QType.F16, QType.BF16, QType.F32])
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
    embedding = runner.model.embed_tokens  # stays 4-bit; its rows are the file's exactly
    assert isinstance(embedding, quant.Int4Embedding)
    assert np.array_equal(embedding(PROMPT).numpy(),
                          tensors["token_embd.weight"][1][PROMPT.numpy()])
    expected = logits(round_trip(llama, qtype))
    got = logits(None, runner)  # type: ignore[arg-type]
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()


def test_a_q8_0_file_runs_as_its_own_blocks(tmp_path: Path, llama: PreTrainedModel) -> None:
    """Q8_0's codes and float16 scales as they are, on the 8-bit kernel (where it is built):
    its layers and token table hold the file's weights exactly; the logits move by the
    kernel's int8 activations only (within a tenth of the largest logit, as for 4 bits)."""
    path = write(tmp_path, llama, QType.Q8_0)
    runner = ModelRunner(tmp_path, quantization="auto", gguf=path, kv_cache_tokens=64,
                         decode_graphs=False)
    assert runner.quantization == "int8"  # Q8_0's own width
    tensors = dequantized_tensors(path)
    embedding = runner.model.embed_tokens
    assert isinstance(embedding, quant.Int8Embedding)
    assert np.array_equal(embedding(PROMPT).numpy(),
                          tensors["token_embd.weight"][1][PROMPT.numpy()])
    layer = runner.model.layers[1].mlp.down_proj
    if runner.own_kernels:
        assert isinstance(layer, quant.Int8BlockLinear)
        assert np.array_equal(layer.dequantized().numpy(), tensors["blk.1.ffn_down.weight"][1])
    expected = logits(round_trip(llama, QType.Q8_0))
    got = logits(None, runner)  # type: ignore[arg-type]
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()


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
