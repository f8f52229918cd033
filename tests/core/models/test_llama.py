"""The Llama family (Llama, Mistral, Qwen2) against transformers on tiny random checkpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from core.engine.block_manager import BlockManager
from core.engine.model_runner import ModelRunner
from core.engine.params import SamplingParams
from core.engine.scheduler import Scheduler
from core.engine.sequence import Sequence
from core.errors import ModelLoadError
from core.models.families import read_config
from tests.core.tiny_model import VOCAB_SIZE, load_runner, tiny_llama_config

ATOL = 1e-4
CONTINUATION = [17, 99, 3, 64, 64, 5, 120, 31, 8, 77, 42, 1]


def hf_logits(model: PreTrainedModel, token_ids: list[int]) -> torch.Tensor:
    """(len, vocab) logits of the reference Hugging Face model over the whole sequence."""
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0]


def scheduler_for(runner: ModelRunner) -> Scheduler:
    blocks = BlockManager(runner.num_blocks, runner.block_size)
    return Scheduler(blocks, max_seqs=8, max_batched_tokens=4096)


def add_seqs(sched: Scheduler, *prompts: list[int]) -> list[Sequence]:
    seqs = [Sequence(i, f"req-{i}", list(p), SamplingParams(), 64) for i, p in enumerate(prompts)]
    for seq in seqs:
        sched.add(seq)
    return seqs


def run_step(runner: ModelRunner, sched: Scheduler) -> torch.Tensor:
    batch = sched.schedule()
    assert batch is not None
    logits = runner.run(batch, sched.blocks)
    sched.computed(batch)
    return logits


def save(model: PreTrainedModel, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def test_prefill_logits_match_hugging_face(hf_llama: LlamaForCausalLM, tiny_model_dir: Path
                                          ) -> None:
    runner = load_runner(tiny_model_dir)
    sched = scheduler_for(runner)
    prompt = [5, 90, 11, 12, 7, 100, 33, 2, 45, 46, 47]
    add_seqs(sched, prompt)
    logits = run_step(runner, sched)
    assert logits.shape == (1, VOCAB_SIZE)
    torch.testing.assert_close(logits[0], hf_logits(hf_llama, prompt)[-1], atol=ATOL, rtol=0)


def test_decoding_through_the_paged_cache_matches_the_full_sequence(
        hf_llama: LlamaForCausalLM, tiny_model_dir: Path) -> None:
    runner = load_runner(tiny_model_dir, block_size=4)
    sched = scheduler_for(runner)
    (seq,) = add_seqs(sched, [5, 90, 11, 12, 7])
    run_step(runner, sched)
    for token_id in CONTINUATION:
        seq.append(token_id)
        logits = run_step(runner, sched)
        expected = hf_logits(hf_llama, seq.token_ids)[-1]
        torch.testing.assert_close(logits[0], expected, atol=ATOL, rtol=0)


def test_two_sequences_of_different_lengths_decode_in_one_batch(
        hf_llama: LlamaForCausalLM, tiny_model_dir: Path) -> None:
    runner = load_runner(tiny_model_dir, block_size=4)
    sched = scheduler_for(runner)
    seqs = add_seqs(sched, [5, 90, 11], [60, 61, 62, 63, 64, 65, 66, 67, 68])
    prefill = run_step(runner, sched)
    for row, seq in enumerate(seqs):
        torch.testing.assert_close(prefill[row], hf_logits(hf_llama, seq.token_ids)[-1],
                                   atol=ATOL, rtol=0)
    for step, token_id in enumerate(CONTINUATION[:8]):
        seqs[0].append(token_id)
        seqs[1].append(CONTINUATION[-1 - step])
        logits = run_step(runner, sched)
        for row, seq in enumerate(seqs):
            expected = hf_logits(hf_llama, seq.token_ids)[-1]
            torch.testing.assert_close(logits[row], expected, atol=ATOL, rtol=0)


def test_a_prompt_prefilled_in_chunks_matches_hugging_face(hf_llama: LlamaForCausalLM,
                                                          tiny_model_dir: Path) -> None:
    runner = load_runner(tiny_model_dir, block_size=4)
    sched = Scheduler(BlockManager(runner.num_blocks, runner.block_size), max_seqs=8,
                      max_batched_tokens=8)
    (seq,) = add_seqs(sched, list(range(3, 26)))
    logits = [run_step(runner, sched) for _ in range(3)]
    assert [len(x) for x in logits] == [0, 0, 1]
    torch.testing.assert_close(logits[-1][0], hf_logits(hf_llama, seq.token_ids)[-1],
                               atol=ATOL, rtol=0)


def test_one_token_prompt_chunks_beside_a_decode_match_hugging_face(
        hf_llama: LlamaForCausalLM, tiny_model_dir: Path) -> None:
    runner = load_runner(tiny_model_dir, block_size=4)
    sched = Scheduler(BlockManager(runner.num_blocks, runner.block_size), max_seqs=2,
                      max_batched_tokens=2)
    short, long = add_seqs(sched, [5], list(range(30, 37)))
    logits = run_step(runner, sched)  # short's one token and long's first one
    assert long.num_cached_tokens == 1
    for step in range(6):  # short decodes; long goes on one token at a time
        short.append(CONTINUATION[step])
        logits = run_step(runner, sched)
    assert long.num_cached_tokens == len(long)
    torch.testing.assert_close(logits[0], hf_logits(hf_llama, short.token_ids)[-1],
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[1], hf_logits(hf_llama, long.token_ids)[-1],
                               atol=ATOL, rtol=0)


def test_a_prompt_continuing_a_cached_prefix_matches_hugging_face(
        hf_llama: LlamaForCausalLM, tiny_model_dir: Path) -> None:
    runner = load_runner(tiny_model_dir, block_size=4)
    sched = scheduler_for(runner)
    system = list(range(3, 20))
    (first,) = add_seqs(sched, [*system, 40, 41])
    run_step(runner, sched)
    second = Sequence(7, "req-7", [*system, 50, 51, 52], SamplingParams(), 64)
    sched.add(second)
    first.append(77)
    logits = run_step(runner, sched)  # the first decodes beside the second's prefill
    assert second.num_cached_tokens == len(second) and sched.num_prefix_hits == 16
    for row, seq in enumerate([second, first]):
        torch.testing.assert_close(logits[row], hf_logits(hf_llama, seq.token_ids)[-1],
                                   atol=ATOL, rtol=0)


def tiny_mistral() -> PreTrainedModel:
    return MistralForCausalLM(MistralConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        initializer_range=0.2, sliding_window=None))


LINEAR_ROPE = {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}
# Llama 3.1's scaling on a context of 32: at head_dim 16 its frequencies fall in all three bands
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
               "rope_theta": 500.0}


@pytest.mark.parametrize("build", [
    lambda: LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=True)),
    lambda: LlamaForCausalLM(tiny_llama_config(head_dim=32)),
    lambda: LlamaForCausalLM(tiny_llama_config(num_key_value_heads=4)),
    lambda: LlamaForCausalLM(tiny_llama_config(rope_parameters=LINEAR_ROPE)),
    lambda: LlamaForCausalLM(tiny_llama_config(rope_parameters=LLAMA3_ROPE)),
    tiny_mistral,
], ids=["tied-embeddings", "wide-head-dim", "no-gqa", "linear-rope", "llama3-rope", "mistral"])
def test_architecture_variants_match_hugging_face(build: Callable[[], PreTrainedModel],
                                                  tmp_path: Path) -> None:
    torch.manual_seed(1)
    hf = build().eval()
    runner = load_runner(save(hf, tmp_path))
    sched = scheduler_for(runner)
    prompt = list(range(3, 40))
    add_seqs(sched, prompt)
    torch.testing.assert_close(run_step(runner, sched)[0], hf_logits(hf, prompt)[-1],
                               atol=ATOL, rtol=0)


def assert_prefill_and_decode_match(hf: PreTrainedModel, runner: ModelRunner) -> None:
    """The logits of a 6-token prompt's prefill, then of 5 decode steps, equal transformers'."""
    sched = scheduler_for(runner)
    (seq,) = add_seqs(sched, [9, 8, 7, 6, 5, 4])
    torch.testing.assert_close(run_step(runner, sched)[0], hf_logits(hf, seq.token_ids)[-1],
                               atol=ATOL, rtol=0)
    for token_id in CONTINUATION[:5]:
        seq.append(token_id)
        expected = hf_logits(hf, seq.token_ids)[-1]
        torch.testing.assert_close(run_step(runner, sched)[0], expected, atol=ATOL, rtol=0)


def test_qwen3_qk_norm_matches_hugging_face(tmp_path: Path) -> None:
    """Qwen3: an RMSNorm of each query and key head (with weights of their own) before the
    rotary embedding, head_dim set apart from hidden / heads; prefill and decode steps."""
    torch.manual_seed(3)
    config = Qwen3Config(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, max_position_embeddings=256, initializer_range=0.2)
    hf = Qwen3ForCausalLM(config).eval()
    for name, param in hf.named_parameters():  # norms start at ones; make them matter
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            torch.nn.init.normal_(param, mean=1.0, std=0.5)
    runner = load_runner(save(hf, tmp_path), block_size=4)
    assert runner.config.qk_norm and runner.config.head_dim == 32
    assert_prefill_and_decode_match(hf, runner)


def test_qwen2_attention_bias_matches_hugging_face(tmp_path: Path) -> None:
    torch.manual_seed(2)
    config = Qwen2Config(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, initializer_range=0.2)
    hf = Qwen2ForCausalLM(config).eval()
    for name, param in hf.named_parameters():  # HF zero-inits biases; make them matter
        if name.endswith("bias"):
            torch.nn.init.normal_(param, std=0.5)
    runner = load_runner(save(hf, tmp_path), block_size=4)
    assert runner.config.attention_bias
    assert_prefill_and_decode_match(hf, runner)


def test_llama_with_attention_bias_loads(tmp_path: Path) -> None:
    torch.manual_seed(3)
    hf = LlamaForCausalLM(tiny_llama_config(attention_bias=True)).eval()
    runner = load_runner(save(hf, tmp_path))
    sched = scheduler_for(runner)
    add_seqs(sched, [3, 4, 5])
    torch.testing.assert_close(run_step(runner, sched)[0], hf_logits(hf, [3, 4, 5])[-1],
                               atol=ATOL, rtol=0)


def test_llama_with_mlp_bias_loads(tmp_path: Path) -> None:
    torch.manual_seed(4)
    hf = LlamaForCausalLM(tiny_llama_config(mlp_bias=True)).eval()
    for layer in hf.model.layers:
        torch.nn.init.normal_(layer.mlp.gate_proj.bias)
    runner = load_runner(save(hf, tmp_path))
    sched = scheduler_for(runner)
    add_seqs(sched, [3, 4, 5])
    torch.testing.assert_close(run_step(runner, sched)[0], hf_logits(hf, [3, 4, 5])[-1],
                               atol=ATOL, rtol=0)


def test_unsupported_model_type_raises_model_load_error(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"model_type": "gpt2"}))
    with pytest.raises(ModelLoadError, match="gpt2"):
        ModelRunner(tmp_path, "float32", kv_cache_tokens=64, num_threads=1)


def test_unsupported_rope_scaling_raises_model_load_error() -> None:
    config = tiny_llama_config().to_dict()
    config["rope_parameters"] = {"rope_type": "su-v2", "factor": 4.0, "rope_theta": 10000.0}
    with pytest.raises(ModelLoadError, match="su-v2"):
        read_config(config)


def test_missing_weights_raise_model_load_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="safetensors"):
        ModelRunner(tmp_path, "float32", kv_cache_tokens=64, num_threads=1)


def test_unknown_dtype_raises_model_load_error(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="dtype"):
        ModelRunner(tiny_model_dir, "float8", kv_cache_tokens=64, num_threads=1)


def test_config_reads_the_architecture_numbers(tiny_model_dir: Path) -> None:
    _, config = read_config(json.loads((tiny_model_dir / "config.json").read_text()))
    assert (config.num_layers, config.num_heads, config.num_kv_heads) == (2, 4, 2)
    assert config.head_dim == 16
    assert config.eos_token_ids == (2,)
    assert not config.attention_bias
