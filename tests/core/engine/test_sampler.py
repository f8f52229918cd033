from __future__ import annotations

import pytest
import torch

from core.engine.params import SamplingParams
from core.engine.sampler import Sampler, _top_k_top_p
from core.engine.sequence import Sequence

VOCAB = 16
EOS = 0
GREEDY = SamplingParams(temperature=0)


def make_seq(seq_id: int, params: SamplingParams, prompt: tuple[int, ...] = (1, 2, 3),
             output: tuple[int, ...] = ()) -> Sequence:
    seq = Sequence(seq_id, f"req-{seq_id}", list(prompt), params, max_tokens=32)
    for token_id in output:
        seq.append(token_id)
    return seq


def random_logits(num_seqs: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(num_seqs, VOCAB, generator=torch.Generator().manual_seed(seed)) * scale


def sample(logits: torch.Tensor, *seqs: Sequence) -> list[int]:
    return Sampler((EOS,), seed=0)(logits, list(seqs))[0]


def test_greedy_picks_the_argmax() -> None:
    logits = random_logits(3)
    seqs = [make_seq(i, GREEDY) for i in range(3)]
    assert sample(logits, *seqs) == logits.argmax(dim=-1).tolist()


def test_greedy_rows_stay_greedy_beside_sampled_rows() -> None:
    logits = random_logits(2, scale=0.1)
    greedy, sampled = make_seq(0, GREEDY), make_seq(1, SamplingParams(temperature=2.0))
    assert sample(logits, greedy, sampled)[0] == int(logits[0].argmax())


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.0])  # 2: the spec's highest
def test_top_k_one_equals_greedy_at_any_temperature(temperature: float) -> None:
    logits = random_logits(4, scale=0.2)
    seqs = [make_seq(i, SamplingParams(temperature=temperature, top_k=1)) for i in range(4)]
    assert sample(logits, *seqs) == logits.argmax(dim=-1).tolist()


def test_tiny_top_p_picks_the_argmax() -> None:
    logits = random_logits(4, scale=0.2)
    seqs = [make_seq(i, SamplingParams(temperature=1.5, top_p=1e-6)) for i in range(4)]
    assert sample(logits, *seqs) == logits.argmax(dim=-1).tolist()


def test_min_p_one_picks_the_argmax() -> None:
    logits = random_logits(4, scale=0.2)
    seqs = [make_seq(i, SamplingParams(temperature=1.5, min_p=1.0)) for i in range(4)]
    assert sample(logits, *seqs) == logits.argmax(dim=-1).tolist()


def draws(sampler: Sampler, logits: torch.Tensor, seqs: list[Sequence], row: int) -> list[int]:
    return [sampler(logits, seqs)[0][row] for _ in range(20)]


def test_seeded_sequence_draws_the_same_alone_or_batched() -> None:
    logits = random_logits(3, scale=0.3)
    alone = draws(Sampler((EOS,), seed=1), logits[1:2],
                  [make_seq(0, SamplingParams(seed=123))], row=0)
    neighbours = [make_seq(5, SamplingParams(temperature=0.8)),
                  make_seq(6, SamplingParams(seed=123)),
                  make_seq(7, SamplingParams(seed=9, top_p=0.8, top_k=5, min_p=0.1))]
    batched = draws(Sampler((EOS,), seed=2), logits, neighbours, row=1)
    assert len(set(alone)) > 1
    assert batched == alone


def test_different_seeds_draw_differently() -> None:
    logits = random_logits(1, scale=0.3)
    first = draws(Sampler((EOS,), seed=0), logits, [make_seq(0, SamplingParams(seed=1))], 0)
    second = draws(Sampler((EOS,), seed=0), logits, [make_seq(0, SamplingParams(seed=2))], 0)
    assert first != second


def frequencies(params: SamplingParams, logits: torch.Tensor, n: int = 6000) -> torch.Tensor:
    """How often one seeded sequence draws each token over ``n`` steps of the same logits."""
    sampler, seq = Sampler((EOS,), seed=0), make_seq(0, params)
    drawn = torch.tensor([sampler(logits, [seq])[0][0] for _ in range(n)])
    return torch.bincount(drawn, minlength=VOCAB).double() / n


def reference_keep(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                   min_p: float) -> torch.Tensor:
    """The distribution a row is drawn from, by the definitions: a full sort, the top k and
    every token whose more probable ones hold at most top_p kept, renormalized, then those
    under min_p times the most probable dropped (in float64)."""
    probs = (logits.double() / temperature).softmax(dim=-1)
    values, order = probs.sort(descending=True)
    before = values.cumsum(dim=0) - values
    keep = (before <= top_p) & (torch.arange(len(values)) < (top_k or len(values)))
    kept = torch.zeros_like(probs).scatter(0, order, values * keep)
    kept = kept.masked_fill(kept < min_p * kept.max(), 0.0)
    return kept / kept.sum()


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0), SamplingParams(temperature=0.5),
    SamplingParams(temperature=1.3, top_k=5), SamplingParams(temperature=1.0, top_p=0.7),
    SamplingParams(temperature=0.8, top_k=6, top_p=0.9, min_p=0.05),
    SamplingParams(temperature=1.0, min_p=0.2)])
def test_draws_follow_the_kept_distribution(params: SamplingParams) -> None:
    """Each token's share of 6,000 draws is its probability within 4 standard errors, and a
    token outside the top k, the nucleus or min-p is never drawn."""
    logits = random_logits(1, seed=4, scale=1.5)
    expected = reference_keep(logits[0], params.temperature, params.top_k, params.top_p,
                              params.min_p)
    observed = frequencies(params, logits)
    assert torch.all(observed[expected == 0] == 0)
    error = (expected * (1 - expected) / 6000).sqrt()
    assert torch.all((observed - expected).abs() <= 4 * error + 1e-9), (observed, expected)
    assert int((expected > 0).sum()) > 2  # a distribution, not one token


@pytest.mark.parametrize("scale", [0.05, 1.0, 8.0])  # flat: one big bucket at the edge; peaked
@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (40, 1.0), (40, 0.5), (3000, 0.95),
                                          (0, 0.999), (7, 0.0)])
def test_the_top_k_and_nucleus_found_by_buckets_are_those_of_a_full_sort(
        scale: float, top_k: int, top_p: float) -> None:
    """Over 50,000 tokens."""
    probs = (torch.randn(50_000, generator=torch.Generator().manual_seed(7)) * scale
             ).softmax(dim=-1)
    ids = _top_k_top_p(probs, top_k, top_p)
    kept = torch.zeros(len(probs), dtype=torch.bool).index_fill(0, ids, True)
    assert torch.equal(kept, reference_keep(probs.log(), 1.0, top_k, top_p, 0.0) > 0)
    assert torch.all(ids[:-1] < ids[1:])  # in token order


def test_a_top_k_past_the_vocabulary_keeps_every_token() -> None:
    probs = random_logits(1)[0].softmax(dim=-1)
    assert torch.equal(_top_k_top_p(probs, 10 ** 9, 1.0), torch.arange(VOCAB))


def test_top_p_one_keeps_every_token_of_the_top_k_whatever_the_sums_rounding() -> None:
    """Probabilities that sum past 1 (as rounded ones may, by far less): top_p 1 is off."""
    probs = 2.0 / VOCAB * (1 - 0.01 * torch.arange(VOCAB))  # the last token the least probable
    assert torch.equal(_top_k_top_p(probs, VOCAB - 1, 1.0), torch.arange(VOCAB - 1))


def test_a_row_with_one_finite_logit_draws_it() -> None:
    logits = torch.full((1, VOCAB), float("-inf"))
    logits[0, 11] = -3.0
    seqs = [make_seq(0, SamplingParams(temperature=1.0, seed=1, top_p=0.5, min_p=0.1))]
    assert sample(logits, *seqs) == [11]


def test_logit_bias_plus_100_forces_a_token() -> None:
    logits = random_logits(2)
    target = int(logits[0].argmin())
    params = [SamplingParams(temperature=1.0, seed=3, logit_bias=((target, 100.0),)),
              SamplingParams(temperature=0, logit_bias=((target, 100.0),))]
    seqs = [make_seq(i, p) for i, p in enumerate(params)]
    assert sample(logits[:1].repeat(2, 1), *seqs) == [target, target]


def eos_heavy_logits() -> torch.Tensor:
    logits = torch.zeros(1, VOCAB)
    logits[0, EOS] = 10.0
    logits[0, 9] = 9.0
    logits[0, 4] = 8.0
    return logits


def test_min_tokens_bans_eos_and_stop_token_ids() -> None:
    params = SamplingParams(temperature=0, min_tokens=2, stop_token_ids=(9,))
    assert sample(eos_heavy_logits(), make_seq(0, params, output=(5,))) == [4]


def test_eos_is_allowed_once_min_tokens_are_out() -> None:
    params = SamplingParams(temperature=0, min_tokens=2)
    assert sample(eos_heavy_logits(), make_seq(0, params, output=(5, 6))) == [EOS]


def close_call_logits() -> torch.Tensor:
    """Token 3 leads token 4 by a little; both positive."""
    logits = torch.zeros(1, VOCAB)
    logits[0, 3] = 1.0
    logits[0, 4] = 0.9
    return logits


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, presence_penalty=0.5),
    SamplingParams(temperature=0, frequency_penalty=0.5),
    SamplingParams(temperature=0, repetition_penalty=1.5),
])
def test_penalties_lower_a_token_seen_in_the_output(params: SamplingParams) -> None:
    seq = make_seq(0, params, output=(3,))
    assert sample(close_call_logits(), seq) == [4]


def test_frequency_penalty_grows_with_the_count() -> None:
    logits = torch.full((1, VOCAB), -1.0)
    logits[0, 3] = 1.0
    logits[0, 4] = 0.0
    params = SamplingParams(temperature=0, frequency_penalty=0.6)
    assert sample(logits, make_seq(0, params, output=(3,))) == [3]
    assert sample(logits, make_seq(0, params, output=(3, 3))) == [4]


def test_presence_penalty_ignores_the_prompt() -> None:
    params = SamplingParams(temperature=0, presence_penalty=2.0)
    assert sample(close_call_logits(), make_seq(0, params, prompt=(3,))) == [3]


def test_repetition_penalty_covers_the_prompt_and_negative_logits() -> None:
    logits = torch.full((1, VOCAB), -5.0)
    logits[0, 3] = -0.50
    logits[0, 4] = -0.55
    params = SamplingParams(temperature=0, repetition_penalty=1.5)
    assert sample(logits, make_seq(0, params, prompt=(3,))) == [4]


def test_penalties_leave_the_callers_logits_untouched() -> None:
    logits = close_call_logits()
    before = logits.clone()
    sample(logits, make_seq(0, SamplingParams(temperature=0, repetition_penalty=2.0), output=(3,)))
    assert torch.equal(logits, before)


def test_logprobs_and_top_logprobs_equal_log_softmax() -> None:
    logits = random_logits(2)
    with_lp = make_seq(0, SamplingParams(temperature=0, logprobs=True, top_logprobs=3))
    without = make_seq(1, GREEDY)
    tokens, logprobs = Sampler((EOS,), seed=0)(logits, [with_lp, without])
    expected = logits[0].log_softmax(dim=-1)
    lp = logprobs[0]
    assert lp is not None and logprobs[1] is None
    assert lp.token_id == tokens[0]
    assert lp.logprob == pytest.approx(float(expected[tokens[0]]), abs=1e-6)
    values, ids = expected.topk(3)
    assert [t for t, _ in lp.top] == ids.tolist()
    assert [v for _, v in lp.top] == pytest.approx(values.tolist(), abs=1e-6)


def test_logprobs_without_top_logprobs_has_no_alternatives() -> None:
    seq = make_seq(0, SamplingParams(temperature=0, logprobs=True))
    _, logprobs = Sampler((EOS,), seed=0)(random_logits(1), [seq])
    assert logprobs[0] is not None and logprobs[0].top == []
