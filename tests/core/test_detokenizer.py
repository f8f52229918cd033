from __future__ import annotations

from dataclasses import dataclass

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from core.detokenizer import _CONTEXT_TOKENS, IncrementalDetokenizer, StopStringMatcher

ACCENTED = "Café crème brûlée à la façon de Noël, déjà vu."
CJK = "東京で日本語の文章を書きます。中文也可以。"
EMOJI = "Emoji time 🙂🚀👩‍💻 party 🎉🙂"
MIXED = "naïve résumé über straße 東京 🎉"
TEXTS = [ACCENTED, CJK, EMOJI, MIXED]


@dataclass
class BPETokenizer:
    """The ``Decoder`` the detokenizer expects, over a ``tokenizers`` byte-level BPE."""

    tok: Tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text).ids)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self.tok.decode(token_ids, skip_special_tokens=skip_special_tokens))


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    """Byte alphabet plus a few dozen merges: most multi-byte characters span several tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXTS, trainer)
    return BPETokenizer(tok)


def stream(bpe: BPETokenizer, prompt: list[int], output: list[int]) -> list[str]:
    detok = IncrementalDetokenizer(bpe, prompt)
    return [detok.add(token_id) for token_id in output]


@pytest.mark.parametrize("text", TEXTS)
def test_tokens_split_multibyte_characters(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert any("\ufffd" in bpe.decode(ids[:n]) for n in range(1, len(ids)))


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_are_whole_characters_and_add_up_to_the_decode(bpe: BPETokenizer,
                                                             text: str) -> None:
    ids = bpe.encode(text)
    deltas = stream(bpe, [], ids)
    assert not any("\ufffd" in delta for delta in deltas)
    assert "".join(deltas) == bpe.decode(ids) == text


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_after_a_multibyte_prompt_add_up_to_the_new_text(bpe: BPETokenizer,
                                                                text: str) -> None:
    prompt = bpe.encode(EMOJI + CJK)
    assert bpe.decode(prompt[-_CONTEXT_TOKENS:]).startswith("\ufffd")  # context cut mid-character
    deltas = stream(bpe, prompt, bpe.encode(text))
    assert not any("\ufffd" in delta for delta in deltas)
    assert "".join(deltas) == text


def test_a_partial_character_is_held_until_it_completes(bpe: BPETokenizer) -> None:
    ids = bpe.encode("🙂")
    deltas = stream(bpe, [], ids)
    assert len(ids) > 1
    assert deltas == [""] * (len(ids) - 1) + ["🙂"]


def test_special_tokens_are_skipped(bpe: BPETokenizer) -> None:
    eos = bpe.tok.token_to_id("<eos>")
    assert eos is not None
    ids = [*bpe.encode("déjà"), eos, *bpe.encode(" vu")]
    assert "".join(stream(bpe, [], ids)) == "déjà vu"


def feed_all(matcher: StopStringMatcher, pieces: list[str]) -> list[str]:
    return [matcher.feed(piece) for piece in pieces]


def test_text_without_stops_passes_straight_through() -> None:
    assert feed_all(StopStringMatcher(()), ["ab", "c"]) == ["ab", "c"]


def test_stop_string_in_one_feed_is_cut_with_everything_after() -> None:
    matcher = StopStringMatcher(("STOP",))
    assert matcher.feed("Hello STOP world") == "Hello "
    assert matcher.stopped_on == "STOP"
    assert matcher.feed("more") == ""
    assert matcher.flush() == ""


@pytest.mark.parametrize("pieces", [
    ["Hello ", "S", "T", "O", "P", "!"],
    ["Hello S", "TO", "P!"],
    ["Hel", "lo ST", "OP!"],
    list("Hello STOP!"),
])
def test_stop_split_across_feeds_is_never_released(pieces: list[str]) -> None:
    matcher = StopStringMatcher(("STOP",))
    released = "".join(feed_all(matcher, pieces))
    assert released == "Hello "
    assert matcher.stopped_on == "STOP"


def test_every_two_piece_split_releases_exactly_the_text_before_the_stop() -> None:
    text = "ab<|end|>cd"
    for cut in range(len(text) + 1):
        matcher = StopStringMatcher(("<|end|>",))
        assert "".join(feed_all(matcher, [text[:cut], text[cut:]])) == "ab"


def test_possible_stop_prefix_is_held_then_released_when_it_diverges() -> None:
    matcher = StopStringMatcher(("STOP",))
    assert matcher.feed("a ST") == "a "
    assert matcher.feed("AR") == "STAR"
    assert matcher.stopped_on is None


def test_flush_releases_held_back_text() -> None:
    matcher = StopStringMatcher(("STOP",))
    assert matcher.feed("abcSTO") == "abc"
    assert matcher.flush() == "STO"


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopStringMatcher(("world", "lo"))
    assert matcher.feed("hello world") == "hel"
    assert matcher.stopped_on == "lo"


def test_earliest_stop_wins_when_the_later_one_completes_first_in_a_feed() -> None:
    matcher = StopStringMatcher(("xyz", "b"))
    assert matcher.feed("a") == "a"
    assert matcher.feed("bxyz") == ""
    assert matcher.stopped_on == "b"


def test_overlapping_stop_prefixes_hold_only_what_could_still_match() -> None:
    matcher = StopStringMatcher(("aab",))
    assert feed_all(matcher, ["a", "a", "a", "b"]) == ["", "", "a", ""]
    assert matcher.stopped_on == "aab"
