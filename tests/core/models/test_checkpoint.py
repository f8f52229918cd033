"""Safetensors checkpoints read tensor by tensor: names, and the memory a quantized load takes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from core.models.checkpoint import SafetensorsCheckpoint, fused_biases, hf_name

ROOT = Path(__file__).resolve().parents[3]


def test_llama_cpp_names_map_to_the_hugging_face_ones() -> None:
    assert hf_name("blk.3.attn_q.weight") == "model.layers.3.self_attn.q_proj.weight"
    assert hf_name("blk.0.ffn_down.bias") == "model.layers.0.mlp.down_proj.bias"
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_name("output.weight") == "lm_head.weight"


def test_tensors_are_float32_copies(tmp_path: Path) -> None:
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    checkpoint = SafetensorsCheckpoint(tmp_path)
    q = checkpoint.tensor("blk.0.attn_q.weight")
    assert q.dtype == torch.float32 and q.shape == (64, 64)
    assert checkpoint.linear(["blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"], [None, None]
                             ).shape == (256, 64)
    assert fused_biases(checkpoint, ["blk.0.attn_q"]) is None
    assert not checkpoint.has("output.weight")


PEAK = """
import sys
from pathlib import Path
from core.engine.model_runner import ModelRunner
def kib(field):  # VmHWM, the peak, is this process's own (ru_maxrss keeps the parent's)
    return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
before = kib("VmRSS")
runner = ModelRunner(Path(sys.argv[1]), quantization="int4", kv_cache_tokens=64,
                     decode_graphs=False)
print((kib("VmHWM") - before) * 1024, runner.weight_bytes)
"""


@pytest.mark.e2e  # a process of its own loads torch and a whole model
def test_a_quantized_load_never_holds_the_model_in_float32(tmp_path: Path) -> None:
    """A 134M-parameter bf16 checkpoint (268 MB; 537 MB in float32) loaded as int4: the peak
    grows by well under the float32 size (one projection in float32 at a time; 265 MiB here,
    of which 89 MiB are the int4 weights and about 100 MiB torch's and the kernels' first use;
    698 MiB when the whole checkpoint was read first)."""
    config = LlamaConfig(vocab_size=256, hidden_size=1024, intermediate_size=4096,
                         num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=4,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    float32_bytes = sum(p.numel() for p in model.parameters()) * 4
    model.save_pretrained(tmp_path)
    del model
    result = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    grown, weight_bytes = map(int, result.stdout.split())
    assert weight_bytes < float32_bytes / 5
    assert grown < float32_bytes * 0.7, f"peak grew by {grown >> 20} MiB"
