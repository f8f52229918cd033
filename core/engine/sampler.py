"""Batched next-token sampling with per-sequence parameters.

Every row of the batch has its own temperature, top-k/top-p/min-p, penalties, logit bias and
random generator, so a seeded request draws the same tokens whatever runs beside it. Sampling
uses the exponential-race trick (argmax of probs / Exp(1) noise) so no row needs a host sync.
"""

from __future__ import annotations

import random

import torch

from core.engine.sequence import Sequence, TokenLogprob


class Sampler:
    """Turns a batch of logits into one token (and optional logprobs) per sequence."""

    def __init__(self, vocab_size: int, eos_token_ids: tuple[int, ...], seed: int | None) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self._rng = random.Random(seed)
        self._generators: dict[int, torch.Generator] = {}

    def release(self, seq: Sequence) -> None:
        """Forget ``seq``'s random generator once it has finished."""
        self._generators.pop(seq.seq_id, None)

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]
                 ) -> tuple[list[int], list[TokenLogprob | None]]:
        """(num_seqs, vocab) logits -> chosen token ids and, where asked, their logprobs."""
        processed = self._process(logits, seqs)
        token_ids = self._choose(processed, seqs)
        return token_ids, self._logprobs(logits, token_ids, seqs)

    def _process(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        needs_copy = any(s.params.needs_penalties or s.params.logit_bias or s.constraint
                         or s.num_output_tokens < s.params.min_tokens for s in seqs)
        if not needs_copy:
            return logits
        logits = logits.clone()
        for row, seq in enumerate(seqs):
            params = seq.params
            if params.needs_penalties:
                _apply_penalties(logits[row], seq)
            for token_id, bias in params.logit_bias:
                if 0 <= token_id < logits.shape[1]:
                    logits[row, token_id] += bias
            if seq.num_output_tokens < params.min_tokens:
                banned = list(self.eos_token_ids) + list(params.stop_token_ids)
                logits[row, banned] = float("-inf")
            if seq.constraint is not None:
                allowed = seq.constraint.allowed(logits.shape[1])
                logits[row].masked_fill_(~allowed, float("-inf"))
        return logits

    def _choose(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        greedy = logits.argmax(dim=-1)  # (num_seqs,)
        if all(s.params.is_greedy for s in seqs):
            return greedy.tolist()
        temps = torch.tensor([s.params.temperature or 1.0 for s in seqs]).unsqueeze(1)
        scaled = logits / temps  # (num_seqs, vocab)
        if any(s.params.top_k or s.params.top_p < 1 for s in seqs):
            scaled = _top_k_top_p(scaled, seqs)
        probs = scaled.softmax(dim=-1)
        min_p = torch.tensor([s.params.min_p for s in seqs]).unsqueeze(1)
        if bool((min_p > 0).any()):
            probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
        noise = torch.stack([self._noise(s) for s in seqs])  # (num_seqs, vocab)
        sampled = (probs / noise).argmax(dim=-1)
        is_greedy = torch.tensor([s.params.is_greedy for s in seqs])
        return torch.where(is_greedy, greedy, sampled).tolist()

    def _noise(self, seq: Sequence) -> torch.Tensor:
        if seq.params.is_greedy:
            return torch.ones(self.vocab_size)
        gen = self._generators.get(seq.seq_id)
        if gen is None:
            seed = seq.params.seed if seq.params.seed is not None else self._rng.getrandbits(63)
            gen = torch.Generator().manual_seed(seed)
            self._generators[seq.seq_id] = gen
        return torch.empty(self.vocab_size).exponential_(generator=gen)

    def _logprobs(self, logits: torch.Tensor, token_ids: list[int], seqs: list[Sequence]
                  ) -> list[TokenLogprob | None]:
        rows = [i for i, s in enumerate(seqs) if s.params.logprobs]
        result: list[TokenLogprob | None] = [None] * len(seqs)
        if not rows:
            return result
        logprobs = logits[rows].log_softmax(dim=-1)  # (len(rows), vocab)
        for j, row in enumerate(rows):
            chosen = token_ids[row]
            k = seqs[row].params.top_logprobs
            top: list[tuple[int, float]] = []
            if k:
                values, ids = logprobs[j].topk(k)
                top = list(zip(ids.tolist(), values.tolist(), strict=True))
            result[row] = TokenLogprob(chosen, float(logprobs[j, chosen]), top)
        return result


def _apply_penalties(row: torch.Tensor, seq: Sequence) -> None:
    """OpenAI presence/frequency penalties on output tokens, repetition penalty on all tokens."""
    params = seq.params
    output = torch.tensor(seq.output_token_ids, dtype=torch.long)
    if output.numel() and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(output, minlength=row.shape[0]).to(row.dtype)
        row -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    if params.repetition_penalty != 1:
        seen = torch.tensor(sorted(set(seq.token_ids)), dtype=torch.long)
        values = row[seen]
        row[seen] = torch.where(values > 0, values / params.repetition_penalty,
                                values * params.repetition_penalty)


def _top_k_top_p(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Mask everything outside each row's top-k and top-p nucleus with -inf."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(logits.shape[1]).unsqueeze(0)
    top_k = torch.tensor([s.params.top_k or logits.shape[1] for s in seqs]).unsqueeze(1)
    top_p = torch.tensor([s.params.top_p for s in seqs]).unsqueeze(1)
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop = (ranks >= top_k) | (mass_before > top_p)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
