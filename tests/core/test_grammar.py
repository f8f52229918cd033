"""Grammar compilation and per-step token masks over a small real (BPE) tokenizer."""

from __future__ import annotations

import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from core.errors import InvalidRequestError
from core.grammar import GrammarCompiler
from core.params import GrammarSpec

CORPUS = ["the cat sat on 123 mats", '{"a": 1, "b": [true, false]}', "0123456789-abc xyz"] * 20


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")
    return GrammarCompiler(hf, hf.vocab_size)


def generate(compiler: GrammarCompiler, spec: GrammarSpec, pick: int) -> str:
    """Follow the mask, always taking the ``pick``-th allowed token, until the grammar ends."""
    matcher = compiler.matcher(spec)
    hf = compiler._hf_tokenizer
    ids: list[int] = []
    for _ in range(40):
        allowed = matcher.allowed(hf.vocab_size).nonzero().flatten().tolist()
        allowed = [t for t in allowed if t != hf.eos_token_id] or allowed
        token = allowed[min(pick, len(allowed) - 1)]
        if token == hf.eos_token_id:
            break
        matcher.consume(token)
        ids.append(token)
        if matcher.is_finished:
            break
    assert matcher.error is None
    return str(hf.decode(ids))


@pytest.mark.parametrize("pick", [0, 1, 3])
def test_regex_mask_only_allows_matching_text(compiler: GrammarCompiler, pick: int) -> None:
    text = generate(compiler, GrammarSpec("regex", "[0-9]{3}-[a-c]{2}"), pick)
    assert re.fullmatch("[0-9]{3}-[a-c]{2}", text)


def test_mask_is_a_vocab_sized_bool_tensor(compiler: GrammarCompiler) -> None:
    mask = compiler.matcher(GrammarSpec("regex", "x+")).allowed(300)
    assert mask.shape == (300,) and mask.dtype == torch.bool
    assert 0 < int(mask.sum()) < 300


@pytest.mark.parametrize(("kind", "value", "message"), [
    ("regex", "a(b", "regex"),
    ("lark", "start: nowhere", "nowhere"),
    ("json_schema", "{not json", "json_schema"),
])
def test_invalid_grammars_are_400_with_the_reason(compiler: GrammarCompiler, kind: str,
                                                  value: str, message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message) as info:
        compiler.matcher(GrammarSpec(kind, value))
    assert info.value.param == "grammar"


def test_unknown_kind_is_rejected_when_described() -> None:
    with pytest.raises(InvalidRequestError):
        GrammarSpec("ebnf", "x")
