"""A GGUF's tokenizer written from its metadata with the tokenizers library alone, for the two
vocabularies the families served here carry (``tokenizer.ggml.model``):

- ``gpt2``, byte-level BPE (Llama 3, Qwen, SmolLM, Granite, OLMo 2): the vocabulary spelled in
  GPT-2's byte alphabet, the file's merges, its ``tokenizer.ggml.pre`` regex;
- ``llama``, SentencePiece BPE (Llama 2, Mistral, Phi-3, Gemma): ``▁`` for a space, bytes a
  token cannot spell as ``<0xNN>`` tokens, the file's merges or, where it has none (most), the
  ones its vocabulary implies, ranked by the file's scores (Gemma's: by position). Three shapes
  by architecture, as transformers has them: Llama's (a ``Metaspace`` pre-tokenizer), Phi-3's (a
  normalizer prepends and replaces the space) and Gemma's (its all-space tokens respelled, text
  split after each space).

transformers builds the same files (:func:`core.models.loader.gguf_metadata` uses it for any
other vocabulary) but its import takes a cold start ~1 s of a core, its conversion and save as
much again or more. ``python -m core.models.loader FILE`` (build_ahead's helper), measured: the
1B Llama-shaped bench file's byte-level vocabulary 0.3 s, where transformers took 2.3 s of CPU;
a synthetic SentencePiece vocabulary of 32,000 tokens 0.3 s (1.2 s), of 262,144 (Gemma 3's
size) 1.7-2.0 s (3.7-3.8 s). The files mean what transformers' do (tests hold them equal,
parsed), but for three differences. The config lists the added tokens: transformers' leaves
them to ``tokenizer.json``, which loading then parses whole in Python to find them (0.7 s of a
start with Gemma 3's vocabulary). A special token a tokenizer class names by default (GPT-2's
``<|endoftext|>``, Llama's ``<s>``, Gemma's ``<mask>``) that the vocabulary lacks is not added
past the model's rows, as transformers adds it: a prompt that spelled it was encoded as an id
past the embedding's rows. And a Gemma vocabulary's config names its ``<mask>``: Gemma's class
names it by default, and these files load through the plain backend
(:data:`core.models.tokenizer.GGUF_TOKENIZER_CLASSES`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# ``tokenizer.ggml.pre``, the way text is split before the merges apply, by the regexes
# llama.cpp gives those names (a test holds them to transformers' table). A name not here
# splits as GPT-2 does (the ByteLevel pre-tokenizer's own regex).
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LETTERS_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LETTERS_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}*{_LETTERS_LOWER}+"
           rf"|[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}+{_LETTERS_LOWER}*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}*{_LETTERS_LOWER}+{_CONTRACTIONS}"
          rf"|[^\r\n\p{{L}}\p{{N}}]?{_LETTERS_UPPER}+{_LETTERS_LOWER}*{_CONTRACTIONS}"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2),
    "qwen35": _QWEN35,
    "tekken": _TEKKEN,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O),
}
# the metadata arrays a tokenizer is built from (any vocabulary's), read whole
ARRAYS = frozenset(f"tokenizer.ggml.{name}" for name in
                   ("tokens", "scores", "token_type", "merges", "precompiled_charsmap"))
CONTROL, USER_DEFINED = 3, 4  # tokenizer.ggml.token_type's values for these kinds of token
# the special tokens a tokenizer's config names, by the metadata keys of their ids
SPECIAL_TOKEN_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                     "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}
# what transformers writes for a tokenizer without a length limit (int(1e30))
NO_LENGTH_LIMIT = 1000000000000000019884624838656


BYTE_LEVEL, SENTENCEPIECE = "gpt2", "llama"  # the vocabularies built here
# the architectures whose SentencePiece vocabulary takes Gemma's or Phi-3's shape, not Llama's
GEMMA_ARCHITECTURES = frozenset({"gemma", "gemma2", "gemma3"})
PHI3_ARCHITECTURES = frozenset({"phi3"})
SPACE = "\u2581"  # SentencePiece's spelling of a space
# the special tokens transformers' class for each vocabulary (and Gemma's) names by default:
# marked special where the vocabulary has them (transformers adds the others past its rows)
CLASS_SPECIALS = {BYTE_LEVEL: ("<|endoftext|>",), SENTENCEPIECE: ("<unk>", "<s>", "</s>"),
                  "gemma": ("<unk>", "<bos>", "<eos>", "<pad>", "<mask>")}


def builds(metadata: Mapping[str, Any]) -> bool:
    """Whether :func:`write` builds the tokenizer of this GGUF metadata."""
    return metadata.get("tokenizer.ggml.model") in (BYTE_LEVEL, SENTENCEPIECE)


def byte_alphabet() -> dict[int, str]:
    """GPT-2's spelling of each byte as a printable character: the alphabet a byte-level
    vocabulary is written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable},
            **{byte: chr(256 + n) for n, byte in enumerate(others)}}


def write(metadata: Mapping[str, Any], target: Path) -> None:
    """Write into ``target`` the tokenizer ``metadata`` (a GGUF's ``tokenizer.*`` keys, its
    arrays whole, and its architecture) describes, as transformers' ``save_pretrained`` lays it
    out: ``tokenizer.json``, ``tokenizer_config.json`` and, where it has one,
    ``chat_template.jinja``."""
    tokens: Sequence[str] = metadata["tokenizer.ggml.tokens"]
    specials = _specials(metadata)
    sentencepiece = metadata.get("tokenizer.ggml.model") == SENTENCEPIECE
    # llama.cpp adds bos to a SentencePiece vocabulary whose file does not say otherwise
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", sentencepiece)) \
        and "bos_token" in specials
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and "eos_token" in specials
    backend = _sentencepiece(metadata) if sentencepiece else _byte_level(metadata)
    split = SPLITS.get(metadata.get("tokenizer.ggml.pre") or "")
    if split is not None:  # the way this vocabulary's merges were learned, whatever its kind
        from tokenizers import Regex, pre_tokenizers
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.post_processor = _template(backend, specials.get("bos_token") if add_bos else None,
                                       specials.get("eos_token") if add_eos else None)
    backend.save(str(target / "tokenizer.json"))
    config: dict[str, Any] = {"added_tokens_decoder": _added_tokens(backend),
                              "backend": "tokenizers", **dict.fromkeys(SPECIAL_TOKEN_IDS),
                              **specials,
                              "model_max_length": NO_LENGTH_LIMIT,
                              "tokenizer_class": "TokenizersBackend"}
    if sentencepiece and metadata.get("general.architecture") in GEMMA_ARCHITECTURES \
            and "<mask>" in tokens:  # as Gemma's class names it, for the plain backend to read
        config["mask_token"] = "<mask>"
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if metadata.get("tokenizer.chat_template"):
        (target / "chat_template.jinja").write_text(metadata["tokenizer.chat_template"])


def _added_tokens(backend: Tokenizer) -> dict[str, dict[str, Any]]:
    """The added tokens of ``tokenizer.json``, as a config lists them. Without them, loading
    through transformers parses the whole of ``tokenizer.json`` in Python to find them, beside
    the tokenizers library's own parse: 0.7 s of a start with Gemma 3's 262,144 tokens."""
    return {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                     "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
            for i, t in sorted(backend.get_added_tokens_decoder().items())}


def _specials(metadata: Mapping[str, Any]) -> dict[str, str]:
    """The file's bos, eos, unknown and padding tokens, by the names a config gives them."""
    tokens: Sequence[str] = metadata["tokenizer.ggml.tokens"]
    return {name: tokens[metadata[f"tokenizer.ggml.{key}"]]
            for name, key in SPECIAL_TOKEN_IDS.items()
            if metadata.get(f"tokenizer.ggml.{key}") is not None}


def implied_merges(vocabulary: Mapping[str, int], scores: Mapping[str, float]
                   ) -> list[tuple[str, str]]:
    """The merges a vocabulary without any implies, in the order transformers'
    ``generate_merges`` gives them: every split of a token into two of the vocabulary's, ranked
    by the token's score, highest first, then by the left part's length, longest first; ties
    in the order of ``scores``. (transformers also sorts each token's splits by their parts' ids
    first, which the ranking then undoes: a token has one split of each length. Without that,
    and in a plain loop, a 262,144-token vocabulary's took 0.7 s, not 1.7.)"""
    found: list[tuple[float, int, int, str, str]] = []
    add = found.append
    for token, score in scores.items():
        length = len(token)
        for cut in range(1, length):
            left = token[:cut]
            if left in vocabulary:
                right = token[cut:]
                if right in vocabulary:
                    add((score, cut, length - cut, left, right))
    found.sort(key=itemgetter(0, 1, 2), reverse=True)
    return [(left, right) for _, _, _, left, right in found]


def _merges(metadata: Mapping[str, Any], tokens: Sequence[str],
            scores: Mapping[str, float] | None = None) -> list[tuple[str, str]]:
    """The file's merges, or where it has none the ones ``tokens`` imply, ranked by ``scores``
    (by default the file's)."""
    if "tokenizer.ggml.merges" in metadata:
        return [(left, right) for left, right in
                (merge.split(" ") for merge in metadata["tokenizer.ggml.merges"])]
    if scores is None:
        scores = dict(zip(tokens, metadata["tokenizer.ggml.scores"], strict=False))
    return implied_merges({token: index for index, token in enumerate(tokens)}, scores)


def _byte_level(metadata: Mapping[str, Any]) -> Any:
    """BPE over the vocabulary spelled in the byte alphabet, split as GPT-2 splits (unless its
    ``tokenizer.ggml.pre`` names other regexes), its tokens marked as :func:`_mark` says."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    tokens: Sequence[str] = metadata["tokenizer.ggml.tokens"]
    spelling = byte_alphabet()
    alphabet = set(spelling.values())
    vocabulary = {token if set(token) <= alphabet
                  else "".join(spelling[byte] for byte in token.encode()): index
                  for index, token in enumerate(tokens)}
    backend = Tokenizer(BPE(vocab=vocabulary, merges=_merges(metadata, tokens),
                            dropout=None, fuse_unk=False, continuing_subword_prefix="",
                            end_of_word_suffix=""))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # a token marked control outside the byte alphabet is a mislabel (adding it would grow
    # the vocabulary past the model's rows)
    _mark(backend, metadata, vocabulary, CLASS_SPECIALS[BYTE_LEVEL],
          control=lambda token: set(token) <= alphabet)
    return backend


def _sentencepiece(metadata: Mapping[str, Any]) -> Any:
    """BPE over the vocabulary as the file spells it (Gemma's all-space tokens respelled in
    ``\u2581``), bytes it cannot spell as its ``<0xNN>`` tokens, in Llama's, Phi-3's or
    Gemma's shape by the file's architecture."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    arch = str(metadata.get("general.architecture") or "")
    gemma = arch in GEMMA_ARCHITECTURES
    tokens: Sequence[str] = metadata["tokenizer.ggml.tokens"]
    if gemma:  # stored as spaces, looked up (and merged) as the text spells them
        tokens = [SPACE * len(token) if " " in token and not token.strip() else token
                  for token in tokens]
    vocabulary = {token: index for index, token in enumerate(tokens)}
    # Gemma's scores do not follow its merges' order; its tokens' order does
    ranks = {token: -index for index, token in enumerate(tokens)} if gemma else None
    unknown = "<unk>" if gemma and "<unk>" in vocabulary else None  # Gemma's class names it
    backend = Tokenizer(BPE(vocab=vocabulary, merges=_merges(metadata, tokens, ranks),
                            dropout=None, fuse_unk=True, byte_fallback=True, unk_token=unknown))
    decode = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if gemma:
        backend.normalizer = normalizers.Replace(" ", SPACE)
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    else:  # a space put before the text, taken off again when decoding
        decode.append(decoders.Strip(" ", 1, 0))
        if arch in PHI3_ARCHITECTURES:  # "  hi" is ▁▁▁hi, not Metaspace's ▁▁hi
            backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE),
                                                       normalizers.Replace(" ", SPACE)])
        else:
            backend.pre_tokenizer = pre_tokenizers.Metaspace(
                replacement=SPACE, prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence(decode)
    _mark(backend, metadata, vocabulary, CLASS_SPECIALS["gemma" if gemma else SENTENCEPIECE],
          control=lambda token: True)
    return backend


def _mark(backend: Any, metadata: Mapping[str, Any], vocabulary: Mapping[str, int],
          defaults: Sequence[str], control: Callable[[str], bool]) -> None:
    """Mark as special the tokenizer class's ``defaults`` the vocabulary has, the tokens the
    file marks control (those ``control`` admits) and the file's bos, eos, unknown and padding
    tokens; add the ones it marks user-defined as tokens matched whole, as llama.cpp does."""
    from tokenizers import AddedToken

    tokens: Sequence[str] = metadata["tokenizer.ggml.tokens"]
    kinds = metadata.get("tokenizer.ggml.token_type") or ()
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                for token in defaults if token in vocabulary])
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                for token, kind in zip(tokens, kinds, strict=False)
                                if kind == CONTROL and control(token)])
    backend.add_tokens([AddedToken(token, normalized=False, special=False)
                        for token, kind in zip(tokens, kinds, strict=False)
                        if kind == USER_DEFINED and token in vocabulary])
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                for token in dict.fromkeys(_specials(metadata).values())])


def _template(backend: Any, bos: str | None, eos: str | None) -> Any:
    """The post-processor that puts ``bos`` before and ``eos`` after each text (None: nothing)."""
    from tokenizers import processors

    def sequence(name: str, type_id: int) -> list[str]:
        return [*([f"{bos}:{type_id}"] if bos else []), f"${name}:{type_id}",
                *([f"{eos}:{type_id}"] if eos else [])]

    single = sequence("A", 0)
    return processors.TemplateProcessing(
        single=" ".join(single), pair=" ".join([*single, *sequence("B", 1)]),
        special_tokens=[(token, backend.token_to_id(token)) for token in (bos, eos) if token])
