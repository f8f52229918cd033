from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from torch import nn

from core.engine.async_engine import AsyncEngine
from core.engine.llm_engine import LLMEngine
from core.engine.outputs import EngineRequest
from core.engine.params import SamplingParams
from core.engine.scheduler import ScheduledBatch
from core.engine.sequence import Sequence
from core.errors import InvalidRequestError
from core.models import kernels, quant
from core.models.blocks import FileBlocks, Int8Blocks, TileKernel
from tests.core.models.test_blocks import FORMS, int4_blocks, int8_blocks, q6_k_blocks
from tests.core.tiny_model import load_runner


@pytest.mark.parametrize(("kind", "tolerance"), [("int8", 0.02), ("int4", 0.15),
                                                 ("f16", 0.002), ("bf16", 0.02)])
def test_each_kernel_approximates_the_full_precision_layer(kind: str, tolerance: float) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 96, bias=True)
    x = torch.randn(5, 128)
    layer = quant.KERNELS[kind](linear.weight, linear.bias)
    with torch.no_grad():
        expected, got = linear(x), layer(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    error = (got - expected).norm() / expected.norm()
    assert 0 < error < tolerance


@pytest.mark.skipif(not kernels.available(), reason="int5 runs on our kernels alone")
def test_int5_approximates_the_full_precision_layer() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 96, bias=True)
    x = torch.randn(5, 128)
    layer = quant.build_linear(linear.weight, linear.bias, "int5", own_kernels=True,
                               dtype=torch.float32)
    assert isinstance(layer, quant.Int8BlockLinear) and layer.kernel == "q5"
    with torch.no_grad():
        expected, got = linear(x), layer(x)
    error = (got - expected).norm() / expected.norm()
    assert 0 < error < 0.08  # between int8's 0.02 and int4's 0.15


def test_f16_rows_match_float32_on_float16_rounded_weights() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 96, bias=True)
    layer = quant.F16Linear(linear.weight, linear.bias)
    x = torch.randn(7, 128)
    expected = nn.functional.linear(x, linear.weight.half().float(), linear.bias)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_int8_one_row_takes_the_shortcut_to_the_same_result() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(128, 96)
    layer = quant.Int8Linear(linear.weight, linear.bias)
    x = torch.randn(6, 128) * torch.tensor([[1.0], [50.0], [0.01], [1.0], [3.0], [1.0]])
    for row in x.split(1):  # alone vs the row-scaled path on two copies of it (same grid)
        torch.testing.assert_close(layer(row), layer(row.repeat(2, 1))[:1], rtol=1e-4,
                                   atol=1e-5 * row.abs().max().item())
    with torch.no_grad():
        expected = linear(x)
    for got in (layer(x), torch.cat([layer(row) for row in x.split(1)])):
        assert ((got - expected).norm(dim=1) / expected.norm(dim=1)).max() < 0.03


def test_blocks_are_kept_in_their_own_format_or_in_the_files() -> None:
    """4-bit blocks under int4, 8-bit ones under int8 where the kernels run, and either in the
    file's own format (``as_filed``: a Q4_K_M's Q6_K tensors under its int4); floats never."""
    four, eight = int4_blocks("q4_k", 8, 64), int8_blocks("q6_k", 8, 64)
    assert quant.keeps_blocks(four, "int4", own_kernels=False)
    assert not quant.keeps_blocks(four, "int8", own_kernels=True)
    assert quant.keeps_blocks(four, "int8", own_kernels=True, as_filed=True)
    assert quant.keeps_blocks(eight, "int8", own_kernels=True)
    assert not quant.keeps_blocks(eight, "int8", own_kernels=False)
    assert not quant.keeps_blocks(eight, "int4", own_kernels=True)
    assert quant.keeps_blocks(eight, "int4", own_kernels=True, as_filed=True)
    assert not quant.keeps_blocks(torch.zeros(8, 64), "int4", own_kernels=True, as_filed=True)


def file_blocks(kernel: TileKernel) -> FileBlocks:
    blocks = int8_blocks("q5_1", 8, 64)
    return FileBlocks(Int8Blocks, blocks.shape, lambda: blocks, lambda: pytest.fail(), kernel)


def test_int5_keeps_a_files_5_bit_blocks_and_converts_the_others() -> None:
    """Under int5 a file's Q5_0, Q5_1 and Q5_K tensors (written into the 5-bit tiles) are kept
    as they are; other 8-bit blocks (Q8_0, and anything already decoded, whose type is gone)
    go through float32 into 5 bits, unless int5 is the file's own format."""
    for kernel in ("q5", "q5k"):
        assert quant.keeps_blocks(file_blocks(kernel), "int5", own_kernels=True)
        assert quant.keeps_blocks(file_blocks(kernel), "int8", own_kernels=True)
        assert not quant.keeps_blocks(file_blocks(kernel), "int5", own_kernels=False)
    assert not quant.keeps_blocks(file_blocks("q8"), "int5", own_kernels=True)
    assert quant.keeps_blocks(file_blocks("q6"), "int5", own_kernels=True, as_filed=True)
    assert not quant.keeps_blocks(int8_blocks("q5_1", 8, 64), "int5", own_kernels=True)
    assert not quant.keeps_blocks(int4_blocks("q4_k", 8, 64), "int5", own_kernels=True)


@pytest.mark.parametrize("form", FORMS)
def test_without_the_kernels_8_bit_blocks_run_through_float(form: str) -> None:
    blocks = int8_blocks(form, 96, 128)
    x = torch.randn(3, 128)
    expected = x @ blocks.dequantize().T
    for kind, layer_type in (("int8", quant.Int8Linear), ("int4", quant.Int4Linear)):
        layer = quant.build_linear(blocks, None, kind, own_kernels=False, dtype=torch.float32,
                                   as_filed=True)
        assert isinstance(layer, layer_type)
        assert (layer(x) - expected).norm() / expected.norm() < 0.15


def test_quantize_linears_replaces_every_linear_it_can() -> None:
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 48)),
                          nn.Linear(48, 8))  # 48 is not a whole number of 4-bit groups
    assert quant.quantize_linears(model, "int4") == 2
    assert isinstance(model[0], quant.Int4Linear) and isinstance(model[2][0], quant.Int4Linear)
    assert isinstance(model[3], nn.Linear)


def test_a_4_bit_model_keeps_its_output_layer_at_16_bits() -> None:
    model = nn.Module()
    model.body, model.lm_head = nn.Linear(64, 64), nn.Linear(64, 96, bias=False)
    assert quant.quantize_linears(model, "int4") == 2
    assert isinstance(model.body, quant.Int4Linear)
    assert isinstance(model.lm_head, quant.F16Linear)


def test_a_rows_logits_do_not_depend_on_its_batch_under_int4() -> None:
    """The LM head of a 4-bit model keeps a row's logits to float rounding whatever its batch
    (fbgemm's int8 quantizes a whole batch's activations with one scale: there a row's logits
    moved by 2e-2 with this neighbour)."""
    torch.manual_seed(0)
    model = nn.Module()
    model.body, model.lm_head = nn.Linear(64, 64), nn.Linear(64, 96, bias=False)
    quant.quantize_linears(model, "int4")
    rows = torch.randn(8, 64)
    rows[5] *= 50  # a neighbour with large activations
    alone = model.lm_head(rows[:1])
    assert (model.lm_head(rows)[:1] - alone).abs().max() < 1e-5


def last_logits(runner_engine: LLMEngine, prompt: list[int]) -> torch.Tensor:
    seq = Sequence(0, "r", list(prompt), SamplingParams(), 8)
    runner_engine.blocks.allocate(seq, len(seq))
    logits = runner_engine.runner.run(ScheduledBatch([seq], [len(seq)]), runner_engine.blocks)
    runner_engine.blocks.free(seq)
    return logits[0]


def test_runner_requantizes_in_place_and_back(tiny_model_dir: Path) -> None:
    from core.engine.llm_engine import EngineConfig

    engine = LLMEngine(load_runner(tiny_model_dir), EngineConfig())
    prompt = [5, 90, 11, 12, 7, 100, 33]
    full = last_logits(engine, prompt)
    full_bytes = engine.runner.weight_bytes
    # This wide-init random model has activation outliers: coarse for 7-bit dynamic activations
    kinds = [("int8", 0.2), ("int4", 0.7), ("f16", 0.01)]
    if engine.runner.own_kernels:  # int5 runs on our kernels alone
        kinds.append(("int5", 0.3))
    for kind, max_error in kinds:
        engine.runner.quantize(kind)
        assert engine.runner.quantization == kind
        assert engine.runner.weight_bytes < full_bytes
        logits = last_logits(engine, prompt)
        assert 0 < (logits - full).norm() / full.norm() < max_error
    engine.runner.quantize("f32")
    assert engine.runner.weight_bytes == full_bytes
    torch.testing.assert_close(last_logits(engine, prompt), full)


async def test_requantizing_mid_generation_pauses_the_stream_and_fails_nothing(
        async_engine: AsyncEngine) -> None:
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    stream = async_engine.generate(EngineRequest("q", [5, 90, 11], params))
    first = await stream.__anext__()

    def swap(engine: LLMEngine) -> str:
        engine.runner.quantize("int8")
        return engine.runner.quantization

    assert await async_engine.call(swap) == "int8"
    outputs = [first] + [out async for out in stream]
    assert outputs[-1].finish_reason == "length"
    assert sum(len(o.token_ids) for o in outputs) == 40


async def test_an_error_inside_a_call_reaches_the_caller_only(async_engine: AsyncEngine) -> None:
    def bad(engine: LLMEngine) -> None:
        engine.runner.quantize("q3_k")

    with pytest.raises(InvalidRequestError):
        await async_engine.call(bad)
    assert async_engine.stats().is_alive
    await asyncio.sleep(0)


def test_a_recorded_lookup_of_a_tied_4bit_head_takes_any_number_of_ids() -> None:
    """A decode graph recorded on two rows replays on three: the lookup's shapes are not
    frozen into the trace (a frozen row count disabled every multi-row graph of a tied 4-bit
    head, such as a Llama-3.2-1B Q4_0 file's)."""
    head = quant.Int4Linear(torch.randn(40, 64), None, own_kernel=True)
    embedding = quant.Int4Embedding(head, torch.float32)
    traced = torch.jit.trace(embedding, torch.tensor([3, 9]), check_trace=False)
    ids = torch.tensor([1, 39, 5])
    assert torch.equal(traced(ids), embedding(ids))
    assert torch.equal(traced(ids), head.dequantized()[ids])


@pytest.mark.skipif(not kernels.cpu_has_avx2(), reason="the 6-bit layout is the kernel's")
def test_a_recorded_lookup_of_a_tied_6bit_head_takes_any_number_of_ids() -> None:
    """As above for a Q6_K table in 6 bits a code (a Q4_K_M file's): its unpacking records
    (a view as another dtype did not, and disabled every decode graph of such a file)."""
    assert kernels.available()
    head = quant.Int8BlockLinear(q6_k_blocks(40, 256), None)
    embedding = quant.Int8Embedding(head, torch.float32)
    traced = torch.jit.trace(embedding, torch.tensor([3, 9]), check_trace=False)
    ids = torch.tensor([1, 39, 5])
    assert torch.equal(traced(ids), embedding(ids))
    assert torch.equal(traced(ids), head.dequantized()[ids])
