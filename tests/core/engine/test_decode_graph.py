"""Recorded decode graphs compute what the eager model computes, once recorded per path."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from core.engine.decode_graph import DecodeGraphs
from core.engine.llm_engine import EngineConfig, LLMEngine
from core.engine.sequence import Sequence
from tests.core.engine.test_llm_engine import GREEDY, PROMPTS, run_until_idle
from tests.core.tiny_model import load_runner

FBGEMM = "fbgemm" in torch.backends.quantized.supported_engines


def engine(model_dir: Path, quantization: str = "none", graphs: bool = True) -> LLMEngine:
    runner = load_runner(model_dir, 512, quantization=quantization, decode_graphs=graphs)
    return LLMEngine(runner, EngineConfig(max_seqs=8, max_seq_len=128))


def generate(llm: LLMEngine, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    """Greedy outputs of the prompts run as one batch. Rows of different lengths are padded;
    once the shorter requests end, the last one decodes alone."""
    seqs: list[Sequence] = []
    for i, (prompt, n) in enumerate(zip(prompts, max_tokens, strict=True)):
        seqs.append(llm.new_sequence(f"r{i}", prompt, GREEDY, n))
        llm.add(seqs[-1])
    run_until_idle(llm)
    return [s.output_token_ids for s in seqs]


@pytest.mark.parametrize("kind", ["none", pytest.param("f16", marks=pytest.mark.skipif(
    not FBGEMM, reason="fbgemm")), pytest.param("int8", marks=pytest.mark.skipif(
        not FBGEMM, reason="fbgemm"))])
def test_graphs_generate_what_the_eager_model_generates(tiny_model_dir: Path, kind: str
                                                        ) -> None:
    prompts = [*PROMPTS, [5, 90, 12]]  # two rows of one length: a batch step with no padding
    max_tokens = [6, 20, 12, 6]
    eager = engine(tiny_model_dir, kind, graphs=False)
    recorded = engine(tiny_model_dir, kind)
    assert eager.runner.graphs is None
    assert generate(recorded, prompts, max_tokens) == generate(eager, prompts, max_tokens)
    # the graphs wrote the decoded tokens' keys and values into the live cache
    assert torch.equal(recorded.runner.kv_cache, eager.runner.kv_cache)
    assert recorded.runner.graphs is not None
    # padded rows, one row alone (int8 takes another branch there)
    assert {(False, True), (True, False)} <= set(recorded.runner.graphs.graphs)
    # a second batch, prefilled eagerly, replays the same graphs over the cache it wrote
    others = [[9, 8, 7, 6], [1, 2, 3, 4, 5, 6, 7, 8]]
    assert generate(recorded, others, [3, 9]) == generate(eager, others, [3, 9])


def test_a_graph_is_recorded_once_per_path(tiny_model_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    traces: list[int] = []
    trace = torch.jit.trace

    def counting_trace(*args: object, **kwargs: object) -> object:
        traces.append(1)
        return trace(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.jit, "trace", counting_trace)
    llm = engine(tiny_model_dir)
    generate(llm, [PROMPTS[0]], [10])  # nine decode steps of one row
    assert len(traces) == 1
    generate(llm, [PROMPTS[1]], [10])
    generate(llm, PROMPTS[:2], [5, 5])  # padded rows: a second path
    assert llm.runner.graphs is not None
    assert len(traces) == len(llm.runner.graphs.graphs) == 2


def test_requantizing_drops_the_old_graphs(tiny_model_dir: Path) -> None:
    llm = engine(tiny_model_dir)
    generate(llm, [PROMPTS[0]], [4])
    old = llm.runner.graphs
    assert old is not None and old.graphs
    llm.runner.quantize("bf16")
    assert llm.runner.graphs is not old
    assert llm.runner.graphs is not None and llm.runner.graphs.model is llm.runner.model
    assert not llm.runner.graphs.graphs
    assert generate(llm, [PROMPTS[0]], [4]) == generate(engine(tiny_model_dir, "bf16", False),
                                                        [PROMPTS[0]], [4])


def test_a_step_the_tracer_cannot_record_runs_eagerly(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def fail(self: DecodeGraphs, args: list[torch.Tensor]) -> None:
        raise RuntimeError("unsupported value kind")

    monkeypatch.setattr(DecodeGraphs, "_trace", fail)
    llm = engine(tiny_model_dir)
    with caplog.at_level(logging.WARNING, logger="core.engine.model_runner"):
        out = generate(llm, PROMPTS, [5, 5, 5])
    assert llm.runner.graphs is None
    assert "decode graphs disabled" in caplog.text and "unsupported value kind" in caplog.text
    assert out == generate(engine(tiny_model_dir, graphs=False), PROMPTS, [5, 5, 5])


def test_prefill_steps_run_eagerly(tiny_model_dir: Path) -> None:
    llm = engine(tiny_model_dir)
    llm.add(llm.new_sequence("r", PROMPTS[1], GREEDY, 4))
    llm.step()  # the prompt's prefill
    assert llm.runner.graphs is not None and not llm.runner.graphs.graphs
    llm.step()  # its first decode step
    assert list(llm.runner.graphs.graphs) == [(True, False)]
