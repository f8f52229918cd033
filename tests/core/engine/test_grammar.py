"""Grammar compilation and per-step token masks over a small real (BPE) tokenizer."""

from __future__ import annotations

import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from core.engine.grammar import MAX_GRAMMAR_TEXT, GrammarCompiler, GrammarMatcher
from core.engine.params import GrammarSpec
from core.errors import InvalidRequestError

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


@pytest.mark.parametrize(("kind", "value"), [
    ("lark", 'start: "never closed'),
    ("regex", "(a|b"),
    ("llguidance", '{"grammars": [{"lark_grammar": "start: \\"x'),
])
def test_unterminated_grammars_are_400(compiler: GrammarCompiler, kind: str, value: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        compiler.matcher(GrammarSpec(kind, value))
    assert info.value.status_code == 400


def test_a_grammar_text_over_the_size_limit_is_refused_before_compiling(
        compiler: GrammarCompiler) -> None:
    with pytest.raises(InvalidRequestError, match=f"at most {MAX_GRAMMAR_TEXT}"):
        compiler.matcher(GrammarSpec("regex", "(a|b)*" * (MAX_GRAMMAR_TEXT // 6 + 1)))


class _Broken:
    """An llguidance matcher stand-in: raising, or in its error state."""

    def __init__(self, raises: bool) -> None:
        self.raises = raises

    def compute_bitmask(self) -> bytes:
        if self.raises:
            raise RuntimeError("panic")
        return bytes(40)  # nothing allowed

    def is_error(self) -> bool:
        return not self.raises

    def get_error(self) -> str:
        return "lexer error: too many expressions constructed"

    def is_stopped(self) -> bool:
        return False

    def consume_token(self, token_id: int) -> bool:
        raise AssertionError("a failed matcher is not fed tokens")


@pytest.mark.parametrize("raises", [True, False])
def test_a_failing_matcher_records_why_and_masks_nothing(raises: bool) -> None:
    matcher = GrammarMatcher(_Broken(raises))  # type: ignore[arg-type]
    mask = matcher.allowed(300)
    assert bool(mask.all())  # a NaN-free row: the sequence ends after this step anyway
    matcher.consume(5)
    assert matcher.is_finished
    assert matcher.error is not None
    assert ("panic" if raises else "too many expressions") in matcher.error
