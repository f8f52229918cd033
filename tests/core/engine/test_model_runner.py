"""The model runner: weights shared between runners on one checkpoint, each its own KV cache (and
its dtype), and the kernels decided on once."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.modules.linear import LinearPackedParams
from transformers import LlamaForCausalLM

from core.engine.block_manager import BlockManager
from core.engine.llm_engine import EngineConfig, LLMEngine
from core.engine.model_runner import ModelRunner
from core.engine.scheduler import Scheduler
from core.errors import ModelLoadError
from core.models import kernels, quant
from core.models.attention import Attention
from core.models.layers import MLP, PackedLinear, RMSNorm
from tests.core.engine.test_llm_engine import PROMPTS, generate_alone
from tests.core.models.test_llama import CONTINUATION, add_seqs, hf_logits, run_step
from tests.core.tiny_model import load_runner, tiny_llama_config


def runner(model_dir: Path, weights_from: ModelRunner | None = None,
           quantization: str = "none") -> ModelRunner:
    return ModelRunner(model_dir, "float32", kv_cache_tokens=256, block_size=4, num_threads=1,
                       weights_from=weights_from, quantization=quantization)


def test_weights_are_shared_and_caches_are_not(tiny_model_dir: Path) -> None:
    first = runner(tiny_model_dir)
    second = runner(tiny_model_dir, weights_from=first)
    assert second.model is not first.model
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(),
                    strict=True):
        assert a.data_ptr() == b.data_ptr()
    packed = [(a, b) for a, b in zip(first.model.modules(), second.model.modules(), strict=True)
              if isinstance(a, PackedLinear)]
    assert all(a.weight is b.weight for a, b in packed)  # oneDNN-packed copies too, if any
    assert first.kv_cache.data_ptr() != second.kv_cache.data_ptr()
    layer_a, layer_b = first.model.layers[0].self_attn, second.model.layers[0].self_attn
    assert layer_a.kv_cache.data_ptr() != layer_b.kv_cache.data_ptr()


def test_rotary_tables_cover_each_runners_own_kv_cache(tiny_model_dir: Path) -> None:
    """The tables end at the KV cache's slots (a 1B model's 131072 positions took 64 MB); a
    runner sharing another's weights with a longer cache gets longer tables of its own."""
    first = ModelRunner(tiny_model_dir, "float32", kv_cache_tokens=32, block_size=4)
    second = ModelRunner(tiny_model_dir, "float32", kv_cache_tokens=256, block_size=4,
                         weights_from=first)
    limit = first.config.max_position_embeddings
    assert first.model.rope.max_positions == min(limit, first.num_blocks * 4)
    assert second.model.rope.max_positions == min(limit, second.num_blocks * 4)
    assert torch.equal(second.model.rope.cos[:first.model.rope.max_positions],
                       first.model.rope.cos)


def test_rotary_tables_end_at_the_longest_sequence(tiny_model_dir: Path) -> None:
    """With ``max_seq_len`` the tables cover that many positions, not the KV cache's slots
    (Gemma 3's 32768 positions of two tables took 134 MB): a sequence run to the limit reads
    them to their last row, and its tokens are those of tables over the whole cache."""
    bounded = ModelRunner(tiny_model_dir, "float32", kv_cache_tokens=256, block_size=4,
                          num_threads=1, max_seq_len=24)
    assert bounded.model.rope.max_positions == 24 < bounded.num_blocks * 4
    tokens = []
    for built in (bounded, runner(tiny_model_dir)):
        engine = LLMEngine(built, EngineConfig(max_seq_len=24))
        tokens.append(generate_alone(engine, PROMPTS[1], max_tokens=100))
    assert len(tokens[0]) == 24 - len(PROMPTS[1])
    assert tokens[0] == tokens[1]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux memory maps")
def test_loaded_weights_do_not_keep_the_checkpoint_file_mapped(tiny_model_dir: Path) -> None:
    loaded = runner(tiny_model_dir)
    gc.collect()
    maps = Path("/proc/self/maps").read_text()
    files = list(tiny_model_dir.glob("*.safetensors"))
    assert files and not any(str(f.resolve()) in maps for f in files)
    assert loaded.weight_bytes > 0


@pytest.mark.parametrize("kind", ["f16", "int8"])
def test_fbgemm_packed_weights_are_shared_too(tiny_model_dir: Path, kind: str) -> None:
    first = runner(tiny_model_dir, quantization=kind)
    second = runner(tiny_model_dir, weights_from=first, quantization=kind)
    packed = [(a, b) for a, b in zip(first.model.modules(), second.model.modules(), strict=True)
              if isinstance(a, LinearPackedParams)]
    assert packed and all(a is b for a, b in packed)
    assert second.weight_bytes == first.weight_bytes


def test_two_engines_on_shared_weights_run_at_once(tiny_model_dir: Path) -> None:
    first = runner(tiny_model_dir)
    engines = [LLMEngine(r, EngineConfig(max_seq_len=64))
               for r in (first, runner(tiny_model_dir, weights_from=first))]
    expected = generate_alone(engines[0], PROMPTS[1], 16)
    results: list[list[int]] = [[], []]

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = generate_alone(engines[i], PROMPTS[1], 16)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected, expected]


def own_kernel_flags(model: nn.Module) -> list[bool]:
    return [m.own_kernels for m in model.modules() if isinstance(m, RMSNorm | Attention | MLP)]


def test_the_kernels_are_decided_on_once_when_the_model_is_built(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = runner(tiny_model_dir)
    assert built.own_kernels == kernels.available()

    def asked() -> bool:
        raise AssertionError("kernels.available() asked after the model was built")

    monkeypatch.setattr(kernels, "available", asked)
    engine = LLMEngine(built, EngineConfig(max_seq_len=64))
    generate_alone(engine, PROMPTS[1], 8)  # a prefill, then decode steps through a graph
    assert built.graphs is not None and built.graphs.graphs
    built.quantize("int4")  # /re_isq builds every linear again
    generate_alone(engine, PROMPTS[1], 8)
    flags = own_kernel_flags(built.model)
    assert len(flags) == 2 * 4 + 1 and set(flags) == {built.own_kernels}  # norms, attn, MLPs
    int4 = [m for m in built.model.modules() if isinstance(m, quant.Int4Linear)]
    assert int4 and all((m.codes is not None) == built.own_kernels for m in int4)


def test_the_kernels_stay_off_for_a_model_they_cannot_run(tiny_model_dir: Path) -> None:
    bf16 = ModelRunner(tiny_model_dir, "bfloat16", kv_cache_tokens=64, num_threads=1)
    assert not any(own_kernel_flags(bf16.model))


@pytest.mark.parametrize(("quantization", "kernels_fp16"), [("int4", True), ("int8", True),
                                                          ("none", False), ("f16", False)])
def test_auto_keeps_keys_and_values_in_float16_beside_8_bit_weights_or_fewer(
        tiny_model_dir: Path, quantization: str, kernels_fp16: bool) -> None:
    """On our kernels a model whose weights start in 8 bits or fewer caches float16 (its keys
    and values rounded far finer than its weights); float weights keep float32; a dtype asked
    for is kept; re-quantized, the cache stays as it is; one the kernels do not take (bfloat16)
    is refused."""
    auto = runner(tiny_model_dir, quantization=quantization)
    want = torch.float16 if kernels_fp16 and auto.own_kernels else torch.float32
    assert auto.kv_dtype == auto.kv_cache.dtype == auto.model.layers[0].self_attn.kv_cache.dtype
    assert auto.kv_cache.dtype == want
    for asked in ("float32", "float16"):
        chosen = ModelRunner(tiny_model_dir, "float32", kv_cache_tokens=64, num_threads=1,
                             quantization=quantization, kv_cache_dtype=asked)
        assert chosen.kv_cache.dtype == getattr(torch, asked)
    auto.quantize("none")
    assert auto.model.layers[0].self_attn.kv_cache.dtype == want
    with pytest.raises(ModelLoadError, match="unknown KV cache dtype 'bfloat16'"):
        ModelRunner(tiny_model_dir, "float32", kv_cache_tokens=64, kv_cache_dtype="bfloat16")


@pytest.mark.parametrize("hidden", [64, 256])  # heads of 16 (torch's attention) and of 64
def test_a_float16_kv_cache_matches_transformers_within_its_rounding(
        tmp_path: Path, hidden: int) -> None:
    """Float weights, float16 keys and values (11 significant bits): the logits of a prompt
    and of 12 decoding steps through the paged cache within 0.5% of the largest of
    transformers' float32 ones (at most 0.26% seen; float32's cache: 1e-4), greedy picks the
    same; a prompt prefilled in chunks of 8 gives the logits of it prefilled whole within 2e-5,
    as with a float32 cache (each chunk attends to its own keys rounded as cached, as later
    chunks read them: 3.4e-3 apart when it did not)."""
    torch.manual_seed(1)
    hf = LlamaForCausalLM(tiny_llama_config(hidden_size=hidden)).eval()
    hf.save_pretrained(tmp_path)
    prompt = list(range(3, 26))
    logits = {}
    for chunk in (4096, 8):
        half = load_runner(tmp_path, kv_cache_dtype="float16")
        assert half.kv_cache.dtype == torch.float16
        if hidden == 256:
            assert half.model.layers[0].self_attn.own_kernels == kernels.available()
        sched = Scheduler(BlockManager(half.num_blocks, half.block_size), max_seqs=8,
                          max_batched_tokens=chunk)
        (seq,) = add_seqs(sched, prompt)
        steps = [run_step(half, sched) for _ in range(-(-len(prompt) // chunk))]
        assert [len(x) for x in steps[:-1]] == [0] * (len(steps) - 1)
        logits[chunk] = steps[-1]
    torch.testing.assert_close(logits[4096], logits[8], atol=2e-5, rtol=0)
    got = logits[8][0]
    for token_id in CONTINUATION:
        expected = hf_logits(hf, seq.token_ids)[-1]
        scale = float(expected.abs().max())
        torch.testing.assert_close(got, expected, atol=5e-3 * scale, rtol=0)
        assert int(got.argmax()) == int(expected.argmax())
        seq.append(token_id)
        got = run_step(half, sched)[0]
