"""A GGUF's byte-level BPE tokenizer (``tokenizer.ggml.model`` ``gpt2``: Llama 3, Qwen, SmolLM,
Granite, OLMo 2), written from its metadata with the tokenizers library alone.

transformers builds the same files (:func:`core.models.loader.gguf_metadata` uses it for every
other vocabulary) but its import takes a cold start ~1 s of a core, its conversion and save as
much again: a 1B Llama's helper took 2.3 s of the two cores a cold start keeps busy, this takes
0.4 s. The files mean what transformers' do (a test holds them equal, parsed), but for one
difference: a vocabulary without ``<|endoftext|>`` (Llama 3's) does not get it added past the
model's rows, as transformers' GPT-2 class adds it (its default special token): a prompt that
spells it was encoded as an id past the embedding's rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


def builds(metadata: Mapping[str, Any]) -> bool:
    """Whether :func:`write` builds the tokenizer of this GGUF metadata."""
    return metadata.get("tokenizer.ggml.model") == "gpt2"


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
    arrays whole) describes, as transformers' ``save_pretrained`` lays it out:
    ``tokenizer.json``, ``tokenizer_config.json`` and, where it has one, ``chat_template.jinja``."""
    tokens: Sequence[str] = metadata["tokenizer.ggml.tokens"]
    specials = {name: tokens[metadata[f"tokenizer.ggml.{key}"]]
                for name, key in SPECIAL_TOKEN_IDS.items()
                if metadata.get(f"tokenizer.ggml.{key}") is not None}
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False)) and "bos_token" in specials
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and "eos_token" in specials
    backend = _backend(metadata, specials, add_bos, add_eos)
    backend.save(str(target / "tokenizer.json"))
    config: dict[str, Any] = {"backend": "tokenizers", **dict.fromkeys(SPECIAL_TOKEN_IDS),
                              **specials,
                              "model_max_length": NO_LENGTH_LIMIT,
                              "tokenizer_class": "TokenizersBackend"}
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if metadata.get("tokenizer.chat_template"):
        (target / "chat_template.jinja").write_text(metadata["tokenizer.chat_template"])


def _backend(metadata: Mapping[str, Any], specials: Mapping[str, str], add_bos: bool,
             add_eos: bool) -> Any:
    """The tokenizers library's tokenizer: BPE over the vocabulary spelled in the byte
    alphabet, the file's merges, its control tokens special and its user-defined ones whole."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    tokens: Sequence[str] = metadata["tokenizer.ggml.tokens"]
    spelling = byte_alphabet()
    alphabet = set(spelling.values())
    vocabulary = {token if set(token) <= alphabet
                  else "".join(spelling[byte] for byte in token.encode()): index
                  for index, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ")) for merge in metadata.get("tokenizer.ggml.merges") or ()]
    backend = Tokenizer(BPE(vocab=vocabulary, merges=merges, dropout=None, fuse_unk=False,
                            continuing_subword_prefix="", end_of_word_suffix=""))
    split = SPLITS.get(metadata.get("tokenizer.ggml.pre") or "")
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False) if split is None \
        else pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    kinds = metadata.get("tokenizer.ggml.token_type") or ()
    # a token marked control outside the byte alphabet is a mislabel (adding it would grow
    # the vocabulary past the model's rows); a user-defined one is matched whole, as llama.cpp
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                for token, kind in zip(tokens, kinds, strict=False)
                                if kind == CONTROL and set(token) <= alphabet])
    backend.add_tokens([AddedToken(token, normalized=False, special=False)
                        for token, kind in zip(tokens, kinds, strict=False)
                        if kind == USER_DEFINED and token in vocabulary])
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                for token in dict.fromkeys(specials.values())])
    backend.post_processor = _template(backend, specials.get("bos_token") if add_bos else None,
                                       specials.get("eos_token") if add_eos else None)
    return backend


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
