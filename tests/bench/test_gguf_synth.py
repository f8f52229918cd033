"""The synthetic bench GGUFs: the new shapes' sizes, and their small versions written, read
(config from the header, tokenizer from the metadata) and run by the server's own loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QType

from bench import gguf_synth
from bench.gguf_synth import SHAPES, tensor_specs, write_gguf
from core.engine.model_runner import ModelRunner
from core.models import gguf_tokenizer
from core.models.attention import AttentionMetadata, ChunkContext
from core.models.gguf_header import map_header
from core.models.loader import gguf_metadata
from core.models.tokenizer import Tokenizer

VOCAB = 49152  # the bundled tokenizer's


def parameters(shape: str) -> int:
    return sum(int(np.prod(s.shape)) for s in tensor_specs(SHAPES[shape], VOCAB, QType.Q4_0,
                                                               QType.Q4_0))


def test_the_1b_class_shapes_have_their_sizes() -> None:
    """Qwen3-MoE-shaped: 1.4B parameters, of which a token uses 0.38B (4 experts of 32);
    Gemma-3-1B-shaped: 0.75B (its own 262k vocabulary would make it 1.0B)."""
    moe = SHAPES["qwen3-moe-1b"]
    assert 1.3e9 < parameters("qwen3-moe-1b") < 1.5e9
    unused = moe.layers * (moe.experts - moe.experts_used) * 3 * moe.expert_ffn * moe.hidden
    assert 0.35e9 < parameters("qwen3-moe-1b") - unused < 0.4e9
    assert 0.7e9 < parameters("gemma-3-1b") < 0.8e9


@pytest.mark.parametrize(("shape", "model_type"), [("tiny-qwen3-moe", "qwen3_moe"),
                                                   ("tiny-gemma-3", "gemma3_text")])
def test_a_small_file_of_each_new_shape_loads_and_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: str, model_type: str) -> None:
    monkeypatch.setattr(gguf_synth, "CHUNK_VALUES", 1 << 16)  # small pools: quick to quantize
    path = write_gguf(tmp_path / f"{shape}.gguf", shape, QType.Q4_0, QType.Q4_0)
    with monkeypatch.context() as cache:  # the metadata's; not the kernels' (a 35 s build)
        cache.setenv("INFERMCP_CACHE_DIR", str(tmp_path / "cache"))
        model_dir = gguf_metadata(path)
    runner = ModelRunner(model_dir, quantization="auto", gguf=path, kv_cache_tokens=64,
                         decode_graphs=False)
    assert runner.config.model_type == model_type and runner.quantization == "int4"
    assert runner.config.num_layers == SHAPES[shape].layers
    prompt = torch.arange(3, 23)  # longer than tiny-gemma-3's window of 16
    meta = AttentionMetadata(torch.arange(len(prompt)), [ChunkContext(len(prompt))])
    with torch.inference_mode():
        logits = runner.model.logits(runner.model(prompt, torch.arange(len(prompt)), meta))
    assert logits.shape == (len(prompt), VOCAB) and bool(logits.isfinite().all())


def test_a_sentencepiece_vocabulary_is_gemmas_layout_and_the_server_reads_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--vocabulary sentencepiece``: Gemma's special tokens, the byte tokens, unique pieces
    of letters and \u2581; the embedding has its rows; our tokenizer, built from the metadata,
    spells a text in them (bytes for what the pieces lack) and back."""
    monkeypatch.setattr(gguf_synth, "CHUNK_VALUES", 1 << 16)
    path = write_gguf(tmp_path / "spm.gguf", "tiny-gemma-3", QType.Q4_0, QType.Q4_0,
                      vocab_size=3000)
    header = map_header(path, gguf_tokenizer.ARRAYS)
    tokens = header.metadata["tokenizer.ggml.tokens"]
    assert tokens[:6] == ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<0x00>"]
    assert len(tokens) == len(set(tokens)) == 3000
    assert set("".join(tokens[261:])) == set("abcdefghijklmnopqrstuvwxyz\u2581")
    assert header.tensors["token_embd.weight"].shape[-1] == 3000
    with monkeypatch.context() as cache:
        cache.setenv("INFERMCP_CACHE_DIR", str(tmp_path / "cache"))
        tokenizer = Tokenizer.load(gguf_metadata(path))
    ids = tokenizer.encode("the quick Fox, 42")
    assert ids[0] == 2 and max(ids) < 3000 and tokens.index("<0x46>") in ids  # F as a byte
    assert tokenizer.decode(ids) == "the quick Fox, 42"


def test_a_k_quant_without_llama_cpp_says_how_to_get_it(tmp_path: Path) -> None:
    """K-quants come from llama.cpp's quantizer (the anchor's environment); without it the
    script ends with one line saying so, and leaves no file behind."""
    source = tmp_path / "f16.gguf"
    source.write_bytes(b"")
    with pytest.raises(SystemExit, match="install llama-cpp-python with `make bench-anchors`"):
        gguf_synth.quantize_k(source, tmp_path / "out.gguf", "Q4_K_M", tmp_path / "no-python")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f16.gguf"]


def test_a_failed_k_quant_leaves_no_file(tmp_path: Path) -> None:
    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\necho 'llama_model_quantize: failed to read' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(SystemExit, match="llama_model_quantize failed \\(1\\)"):
        gguf_synth.quantize_k(tmp_path / "f16.gguf", tmp_path / "out.gguf", "Q4_K_M", failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["python"]
