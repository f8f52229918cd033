"""Every family against transformers on tiny random checkpoints: the logits of a batched prefill
of two prompts, of decode steps (recorded as graphs where the family allows), and of a prompt
continuing a cached prefix, each equal to transformers' own model on the same sequence."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers as hf
from transformers import PreTrainedModel

from core.engine.model_runner import ModelRunner
from core.engine.params import SamplingParams
from core.engine.sequence import Sequence
from tests.core.models.test_llama import ATOL, add_seqs, hf_logits, run_step, scheduler_for
from tests.core.tiny_model import VOCAB_SIZE, load_runner

WINDOW = 6  # shorter than the prompts: the sliding layers must drop their oldest keys


def shape(vocab: int, layers: int = 2, **fields: object) -> dict[str, object]:
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=256, initializer_range=0.2, pad_token_id=0,
                bos_token_id=1, eos_token_id=2) | fields


def gemma2(vocab: int, **fields: object) -> PreTrainedModel:
    return hf.Gemma2ForCausalLM(hf.Gemma2Config(**shape(
        vocab, head_dim=16, sliding_window=WINDOW, query_pre_attn_scalar=24,
        attn_logit_softcapping=1.5, final_logit_softcapping=3.0) | fields))


def gemma3(vocab: int, **fields: object) -> PreTrainedModel:
    rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}
    return hf.Gemma3ForCausalLM(hf.Gemma3TextConfig(**shape(
        vocab, 3, head_dim=32, sliding_window=WINDOW, rope_parameters=rope,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        query_pre_attn_scalar=32) | fields))


def phi3(vocab: int, **fields: object) -> PreTrainedModel:
    """Phi-4-mini's shape of rotary: half of each head rotates, longrope factors (within the
    original context: transformers switches the whole sequence to the long ones past it)."""
    torch.manual_seed(7)
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
            "short_factor": (1 + torch.rand(4) * 3).tolist(),
            "long_factor": (1 + torch.rand(4) * 9).tolist(),
            "original_max_position_embeddings": 64}
    return hf.Phi3ForCausalLM(hf.Phi3Config(**shape(
        vocab, rope_parameters=rope, original_max_position_embeddings=64,
        sliding_window=WINDOW) | fields))


def granite(vocab: int, **fields: object) -> PreTrainedModel:
    return hf.GraniteForCausalLM(hf.GraniteConfig(**shape(
        vocab, embedding_multiplier=6.0, residual_multiplier=0.5, attention_multiplier=0.1,
        logits_scaling=4.0) | fields))


def olmo2(vocab: int, **fields: object) -> PreTrainedModel:
    return hf.Olmo2ForCausalLM(hf.Olmo2Config(**shape(vocab) | fields))


def qwen3(vocab: int, **fields: object) -> PreTrainedModel:
    return hf.Qwen3ForCausalLM(hf.Qwen3Config(**shape(vocab, head_dim=32) | fields))


def qwen3_moe(vocab: int, **fields: object) -> PreTrainedModel:
    return hf.Qwen3MoeForCausalLM(hf.Qwen3MoeConfig(**shape(
        vocab, 3, head_dim=16, moe_intermediate_size=32, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1]) | fields))


def mistral_window(vocab: int, **fields: object) -> PreTrainedModel:
    return hf.MistralForCausalLM(hf.MistralConfig(**shape(vocab, sliding_window=WINDOW)
                                                   | fields))


def llama3(vocab: int, **fields: object) -> PreTrainedModel:
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
            "rope_theta": 500.0}
    return hf.LlamaForCausalLM(hf.LlamaConfig(**shape(vocab, rope_parameters=rope) | fields))


def llama_yarn(vocab: int, **fields: object) -> PreTrainedModel:
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
            "rope_theta": 10000.0}
    return hf.LlamaForCausalLM(hf.LlamaConfig(**shape(vocab, rope_parameters=rope) | fields))


# name -> builder(vocab, **config fields overriding the builder's)
FAMILIES: dict[str, Callable[..., PreTrainedModel]] = {
    "gemma2": gemma2, "gemma3_text": gemma3, "phi3": phi3, "granite": granite, "olmo2": olmo2,
    "qwen3": qwen3, "qwen3_moe": qwen3_moe, "mistral-window": mistral_window,
    "llama3": llama3, "llama-yarn": llama_yarn}


def build(name: str, vocab: int = VOCAB_SIZE, **fields: object) -> PreTrainedModel:
    """A tiny random ``name`` checkpoint whose every weight matters (``fields``: config fields
    in place of the builder's)."""
    torch.manual_seed(11)
    model = FAMILIES[name](vocab, **fields).eval()
    with torch.no_grad():  # norms start at ones (Gemma's at zeros); make them matter
        for param_name, param in model.named_parameters():
            if "norm" in param_name:
                param.normal_(mean=0.0 if "gemma" in name else 1.0, std=0.3)
    return model


@pytest.fixture(params=list(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[PreTrainedModel, ModelRunner]:
    model = build(request.param)
    model.save_pretrained(tmp_path)
    return model, load_runner(tmp_path, block_size=4)


def test_prefill_and_decode_match_transformers(family: tuple[PreTrainedModel, ModelRunner]
                                               ) -> None:
    hf_model, runner = family
    sched = scheduler_for(runner)
    seqs = add_seqs(sched, list(range(3, 15)), list(range(40, 60)))
    logits = run_step(runner, sched)
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(logits[row], hf_logits(hf_model, seq.token_ids)[-1],
                                   atol=ATOL, rtol=0)
    for step in range(6):
        for row, seq in enumerate(seqs):
            seq.append(int(logits[row].argmax()) if step % 2 else 17 + step)
        logits = run_step(runner, sched)
        for row, seq in enumerate(seqs):
            torch.testing.assert_close(logits[row], hf_logits(hf_model, seq.token_ids)[-1],
                                       atol=ATOL, rtol=0)


def test_a_cached_prefix_continues_as_transformers(family: tuple[PreTrainedModel, ModelRunner]
                                                   ) -> None:
    hf_model, runner = family
    sched = scheduler_for(runner)
    system = list(range(3, 23))
    add_seqs(sched, [*system, 40, 41])
    run_step(runner, sched)
    second = Sequence(7, "req-7", [*system, 50, 51, 52, 53, 54], SamplingParams(), 64)
    sched.add(second)
    logits = run_step(runner, sched)
    assert sched.num_prefix_hits == 20
    torch.testing.assert_close(logits[-1], hf_logits(hf_model, second.token_ids)[-1],
                               atol=ATOL, rtol=0)
