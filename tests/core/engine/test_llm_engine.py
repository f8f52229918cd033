from __future__ import annotations

from core.engine.llm_engine import LLMEngine, StepOutput
from core.engine.params import SamplingParams
from core.engine.sequence import Sequence
from tests.core.tiny_model import EngineFactory

GREEDY = SamplingParams(temperature=0, ignore_eos=True)
PROMPTS = [[5, 90, 11], [60, 61, 62, 63, 64, 65, 66], [7, 8, 9, 10, 11]]


def add(engine: LLMEngine, prompt: list[int], max_tokens: int,
        params: SamplingParams = GREEDY) -> Sequence:
    seq = engine.new_sequence(f"req-{len(prompt)}-{max_tokens}", prompt, params, max_tokens)
    engine.add(seq)
    return seq


def run_until_idle(engine: LLMEngine, max_steps: int = 500) -> list[list[StepOutput]]:
    steps: list[list[StepOutput]] = []
    while engine.scheduler.has_work and len(steps) < max_steps:
        steps.append(engine.step())
    assert not engine.scheduler.has_work
    return steps


def generate_alone(engine: LLMEngine, prompt: list[int], max_tokens: int,
                   params: SamplingParams = GREEDY) -> list[int]:
    seq = add(engine, prompt, max_tokens, params)
    run_until_idle(engine)
    return seq.output_token_ids


def assert_all_blocks_free(engine: LLMEngine) -> None:
    assert engine.blocks.num_free_blocks == engine.blocks.num_usable_blocks


def test_sequences_finish_at_their_own_max_tokens_and_free_their_blocks(
        make_engine: EngineFactory) -> None:
    engine = make_engine()
    seqs = [add(engine, prompt, n) for prompt, n in zip(PROMPTS, [1, 4, 9], strict=True)]
    run_until_idle(engine)
    assert [s.num_output_tokens for s in seqs] == [1, 4, 9]
    assert all(s.finish_reason == "length" and s.block_table == [] for s in seqs)
    assert_all_blocks_free(engine)


def test_a_sequence_finishes_in_the_step_that_makes_its_last_token(
        make_engine: EngineFactory) -> None:
    engine = make_engine()
    add(engine, PROMPTS[0], 3)
    reasons = [engine.step()[0].seq.finish_reason for _ in range(3)]
    assert reasons == [None, None, "length"]
    assert not engine.scheduler.has_work


def test_request_added_while_others_decode_joins_the_next_step_beside_them(
        make_engine: EngineFactory) -> None:
    engine = make_engine()
    first = add(engine, PROMPTS[0], 10)
    engine.step()
    engine.step()
    late = add(engine, PROMPTS[1], 10)
    assert [out.seq for out in engine.step()] == [late, first]  # prompt chunks come first
    assert [out.seq for out in engine.step()] == [first, late]


def test_greedy_outputs_batched_equal_each_decoded_alone(make_engine: EngineFactory) -> None:
    engine = make_engine()
    alone = [generate_alone(engine, prompt, 12) for prompt in PROMPTS]
    seqs = [add(engine, prompt, 12) for prompt in PROMPTS]
    run_until_idle(engine)
    assert [s.output_token_ids for s in seqs] == alone
    assert len({tuple(tokens) for tokens in alone}) == len(PROMPTS)


def test_seeded_sampling_batched_equals_alone(make_engine: EngineFactory) -> None:
    params = SamplingParams(temperature=1.0, seed=42, ignore_eos=True)
    engine = make_engine()
    alone = generate_alone(engine, PROMPTS[1], 10, params)
    add(engine, PROMPTS[0], 10, SamplingParams(temperature=1.0, ignore_eos=True))
    seeded = add(engine, PROMPTS[1], 10, params)
    run_until_idle(engine)
    assert seeded.output_token_ids == alone


def test_max_seqs_bounds_the_running_batch(make_engine: EngineFactory) -> None:
    engine = make_engine(max_seqs=2)
    seqs = [add(engine, [10 + i, 20, 30], 3) for i in range(5)]
    while engine.scheduler.has_work:
        outputs = engine.step()
        assert len(outputs) <= 2
        assert engine.scheduler.num_running <= 2
    assert all(s.num_output_tokens == 3 for s in seqs)


def test_abort_frees_the_blocks_at_once(make_engine: EngineFactory) -> None:
    engine = make_engine()
    seq = add(engine, PROMPTS[1], 50)
    engine.step()
    engine.step()
    assert engine.blocks.num_free_blocks < engine.blocks.num_usable_blocks
    engine.finish(seq, "abort")
    assert_all_blocks_free(engine)
    assert seq.finish_reason == "abort"
    assert engine.step() == []


def test_stop_token_id_ends_the_sequence_with_stop(make_engine: EngineFactory) -> None:
    engine = make_engine()
    expected = generate_alone(engine, PROMPTS[2], 8)
    stop_id = expected[3]
    params = SamplingParams(temperature=0, ignore_eos=True, stop_token_ids=(stop_id,))
    seq = add(engine, PROMPTS[2], 8, params)
    run_until_idle(engine)
    assert seq.output_token_ids == expected[:expected.index(stop_id) + 1]
    assert seq.finish_reason == "stop"


def test_max_seq_len_ends_a_sequence_with_length(make_engine: EngineFactory) -> None:
    engine = make_engine(max_seq_len=12)
    seq = add(engine, PROMPTS[1], 100)
    run_until_idle(engine)
    assert len(seq) == 12
    assert seq.finish_reason == "length"


def test_preempted_sequence_recomputes_to_the_same_greedy_output(
        make_engine: EngineFactory) -> None:
    engine = make_engine(kv_cache_tokens=32)  # 8 blocks of 4: two 20-token sequences do not fit
    alone = [generate_alone(engine, prompt, 14) for prompt in ([1, 2, 3, 4, 5, 6], PROMPTS[1])]
    seqs = [add(engine, [1, 2, 3, 4, 5, 6], 14), add(engine, PROMPTS[1], 14)]
    run_until_idle(engine)
    assert engine.scheduler.num_preemptions > 0
    assert [s.output_token_ids for s in seqs] == alone
    assert_all_blocks_free(engine)
