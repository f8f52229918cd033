from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from core.engine.detokenizer import _CONTEXT_TOKENS, IncrementalDetokenizer, StopStringMatcher

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


# --- properties (hypothesis): any split into tokens or feeds gives the same text -----------

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)


class ByteTokenizer:
    """Each token id stands for a byte string; decoding joins the bytes and replaces broken
    UTF-8 with U+FFFD, as byte-level tokenizers do."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def add(self, piece: bytes) -> int:
        self.pieces.append(piece)
        return len(self.pieces) - 1

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return b"".join(self.pieces[i] for i in token_ids).decode("utf-8", errors="replace")


def split(data: bytes | str, cuts: list[int]) -> list[Any]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# U+FFFD itself is excluded: a model emitting it is indistinguishable from a half character.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffd"))
CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)


@PROPERTY_SETTINGS
@given(prompt=TEXT, text=TEXT, prompt_cuts=CUTS, cuts=CUTS)
def test_any_byte_split_detokenizes_to_the_whole_text(prompt: str, text: str,
                                                      prompt_cuts: list[int],
                                                      cuts: list[int]) -> None:
    tokenizer = ByteTokenizer()
    prompt_ids = [tokenizer.add(p) for p in split(prompt.encode(), prompt_cuts)]
    detok = IncrementalDetokenizer(tokenizer, prompt_ids)
    deltas = [detok.add(tokenizer.add(piece)) for piece in split(text.encode(), cuts)]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)  # never a broken character


def reference_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """What generation one character at a time gives: the stop that completes first (the
    longest of those completing at the same place) ends the text just before it."""
    hits = [(i + len(s), i, s) for s in stops if (i := text.find(s)) >= 0]
    if not hits:
        return text, None
    _, start, stop = min(hits)
    return text[:start], stop


STOPS = st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=4)


@PROPERTY_SETTINGS
@given(text=st.text(alphabet="abcd", max_size=30), stops=STOPS, cuts=CUTS)
def test_any_split_of_the_output_stops_at_the_same_place(text: str, stops: list[str],
                                                          cuts: list[int]) -> None:
    matcher = StopStringMatcher(tuple(stops))
    released = "".join(matcher.feed(piece) for piece in split(text, cuts)) + matcher.flush()
    assert (released, matcher.stopped_on) == reference_stop(text, tuple(stops))
    assert not any(s in released for s in stops)
