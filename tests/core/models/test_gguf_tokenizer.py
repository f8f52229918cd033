"""A GGUF's byte-level and SentencePiece vocabularies' tokenizers written by the tokenizers
library alone: the files transformers' GGUF conversion writes from the same metadata, for each
way the metadata can vary, but two deliberate differences (no class default past the model's
rows; Gemma's config names its <mask>); and the helper that builds them imports no
transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import pytest
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

from core.errors import ModelLoadError
from core.models import gguf_tokenizer, loader
from core.models.gguf_header import map_header
from core.models.tokenizer import Tokenizer
from tests.core.models.gguf_files import (
    sentencepiece_metadata,
    trained_sentencepiece,
    write_tokenizer_gguf,
)

KEY = "tokenizer.ggml."


@pytest.fixture(scope="module")
def bundled() -> dict[str, Any]:
    return dict(map_header(loader.default_gguf(), gguf_tokenizer.ARRAYS).metadata)


def appended(metadata: dict[str, Any], tokens: dict[str, int]) -> dict[str, Any]:
    """``metadata`` with ``tokens`` (text: token type) after its vocabulary."""
    return {**metadata, f"{KEY}tokens": [*metadata[f"{KEY}tokens"], *tokens],
            f"{KEY}token_type": [*metadata[f"{KEY}token_type"], *tokens.values()]}


def files(directory: Path) -> dict[str, Any]:
    return {path.name: json.loads(path.read_text()) if path.suffix == ".json"
            else path.read_text() for path in directory.iterdir()}


def both(metadata: dict[str, Any], tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The files transformers writes for ``metadata``, and ours, less our config's list of the
    added tokens (checked to be ``tokenizer.json``'s: transformers' config has none)."""
    (tmp_path / "theirs").mkdir()
    (tmp_path / "ours").mkdir()
    loader._convert_tokenizer(metadata, metadata.get("general.architecture", "llama"),
                              tmp_path / "theirs")
    gguf_tokenizer.write(metadata, tmp_path / "ours")
    ours = files(tmp_path / "ours")
    listed = ours["tokenizer_config.json"].pop("added_tokens_decoder")
    assert listed == {str(token["id"]): {k: v for k, v in token.items() if k != "id"}
                      for token in ours["tokenizer.json"]["added_tokens"]}
    return files(tmp_path / "theirs"), ours


def splitting(pre: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda metadata: {**metadata, f"{KEY}pre": pre}


VARIANTS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "as bundled": lambda m: m,
    "adds bos and eos": lambda m: {**m, f"{KEY}add_bos_token": True,
                                   f"{KEY}add_eos_token": True},
    "says nothing of bos": lambda m: {k: v for k, v in m.items() if k != f"{KEY}add_bos_token"},
    "no template, padding or unknown token": lambda m: {
        k: v for k, v in m.items() if k not in (
            "tokenizer.chat_template", f"{KEY}padding_token_id", f"{KEY}unknown_token_id")},
    "no bos or eos": lambda m: {**{k: v for k, v in m.items() if k not in (
        f"{KEY}bos_token_id", f"{KEY}eos_token_id")}, f"{KEY}add_bos_token": True},
    "no token types": lambda m: {k: v for k, v in m.items() if k != f"{KEY}token_type"},
    # a user-defined token matched whole, one with a space it cannot be, a control token
    # outside the byte alphabet (a mislabel), a plain token made bos
    "other token types": lambda m: {
        **appended(m, {"<think>": 4, "<a b>": 4, "<ctl\uff5c>": 3, "<plain>": 1}),
        f"{KEY}bos_token_id": len(m[f"{KEY}tokens"]) + 3, f"{KEY}add_bos_token": True},
    "bos outside the byte alphabet": lambda m: {
        **appended(m, {"<ctl\uff5c>": 3}), f"{KEY}bos_token_id": len(m[f"{KEY}tokens"]),
        f"{KEY}add_bos_token": True},
    **{f"splits as {pre}": splitting(pre)
       for pre in ("llama-bpe", "qwen2", "qwen35", "tekken", "gpt-4o", "not-a-name")},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_files_are_transformers_own(bundled: dict[str, Any], tmp_path: Path,
                                        variant: str) -> None:
    theirs, ours = both(VARIANTS[variant](bundled), tmp_path)
    assert ours == theirs


def test_a_vocabulary_without_endoftext_gets_no_token_past_the_models_rows(
        bundled: dict[str, Any], tmp_path: Path) -> None:
    """transformers' GPT-2 class adds its default special token, ``<|endoftext|>``, where a
    vocabulary (Llama 3's) lacks it: an id the model has no row for. Ours adds nothing."""
    tokens = list(bundled[f"{KEY}tokens"])
    tokens[0] = "<|end_of_text|>"
    metadata = {**bundled, f"{KEY}tokens": tokens}
    theirs, ours = both(metadata, tmp_path)
    extra = {"content": "<|endoftext|>", "id": len(tokens)}
    assert [extra] == [{"content": token["content"], "id": token["id"]}
                       for token in theirs["tokenizer.json"]["added_tokens"]
                       if token["id"] >= len(tokens)]
    theirs["tokenizer.json"]["added_tokens"].pop()
    assert ours == theirs  # nothing else differs
    (tmp_path / "ours" / loader.CLASS_FILE).write_text('{"tokenizer_class": "TokenizersBackend"}')
    tokenizer = Tokenizer.load(tmp_path / "ours")
    assert tokenizer.vocab_size == len(tokens)
    assert max(tokenizer.encode("a <|endoftext|> b")) < len(tokens)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3"])
def test_a_written_tokenizer_loads_without_parsing_its_json_in_python(
        bundled: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        arch: str) -> None:
    """transformers reads a config's list of added tokens rather than parse all of
    ``tokenizer.json`` for them (0.7 s of a start with Gemma 3's vocabulary); the tokenizer is
    the one loaded the slow way."""
    import transformers.tokenization_utils_base as base

    metadata = bundled if arch == "gpt2" else sentencepiece_metadata(arch)
    gguf_tokenizer.write(metadata, tmp_path)
    Tokenizer.record_class(tmp_path, "llama" if arch == "gpt2" else "gemma3_text")
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("added_tokens_decoder", None)
    config_path.write_text(json.dumps(config))
    slow = Tokenizer.load(tmp_path).hf_tokenizer
    gguf_tokenizer.write(metadata, tmp_path)

    def load(file: Any, *args: Any, **kwargs: Any) -> Any:
        assert not getattr(file, "name", "").endswith("tokenizer.json"), "parsed in Python"
        return json.load(file, *args, **kwargs)

    monkeypatch.setattr(base, "json", type("Json", (), {"load": staticmethod(load),
                                                         "loads": staticmethod(json.loads)}))
    fast = Tokenizer.load(tmp_path).hf_tokenizer
    assert fast.added_tokens_decoder == slow.added_tokens_decoder
    assert fast.all_special_tokens == slow.all_special_tokens
    text = "<|im_start|>user a  b <mask> é中 <bos> c<|im_end|>"
    assert fast(text).input_ids == slow(text).input_ids
    assert fast.decode(fast(text).input_ids) == slow.decode(slow(text).input_ids)


def test_the_splits_are_those_transformers_names() -> None:
    assert dict(GGUF_PRE_TOKENIZER_SPLITS) == gguf_tokenizer.SPLITS


def test_the_byte_alphabet_is_gpt2s() -> None:
    assert gguf_tokenizer.byte_alphabet() == bytes_to_unicode()


def test_byte_level_and_sentencepiece_vocabularies_are_built_here(
        bundled: dict[str, Any]) -> None:
    assert gguf_tokenizer.builds(bundled)
    assert gguf_tokenizer.builds({**bundled, f"{KEY}model": "llama"})
    for other in ("t5", "bert", "gemma4", None):
        assert not gguf_tokenizer.builds({**bundled, f"{KEY}model": other})


# ------------------------------------------------------------------ SentencePiece vocabularies

SENTENCEPIECE_VARIANTS: dict[str, Callable[[dict[str, Any], list[str]], dict[str, Any]]] = {
    "as written": lambda m, merges: m,
    "with the file's merges": lambda m, merges: {**m, f"{KEY}merges": merges},
    "says nothing of bos or eos": lambda m, merges: {
        k: v for k, v in m.items() if k not in (f"{KEY}add_bos_token", f"{KEY}add_eos_token")},
    "adds eos, not bos": lambda m, merges: {**m, f"{KEY}add_bos_token": False,
                                            f"{KEY}add_eos_token": True},
    "no token types": lambda m, merges: {k: v for k, v in m.items() if k != f"{KEY}token_type"},
    "every score tied": lambda m, merges: {**m, f"{KEY}scores": [0.0] * len(m[f"{KEY}scores"])},
    "no template, bos or padding": lambda m, merges: {
        k: v for k, v in m.items() if k not in ("tokenizer.chat_template",
                                                f"{KEY}bos_token_id", f"{KEY}padding_token_id")},
}


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma3"])
@pytest.mark.parametrize("variant", SENTENCEPIECE_VARIANTS)
def test_a_sentencepiece_vocabularys_files_are_transformers_own(tmp_path: Path, arch: str,
                                                                  variant: str) -> None:
    """Llama's shape, Phi-3's and Gemma's (its tokens of spaces respelled, merges ranked by
    position): each as transformers writes it, merges implied from the scores or the file's."""
    merges = list(trained_sentencepiece()[1])
    metadata = SENTENCEPIECE_VARIANTS[variant](sentencepiece_metadata(arch), merges)
    theirs, ours = both(metadata, tmp_path)
    if arch == "gemma3":  # named, as Gemma's class names it, for the plain backend that loads it
        assert ours["tokenizer_config.json"].pop("mask_token") == "<mask>"
    assert ours == theirs
    assert len(ours["tokenizer.json"]["model"]["merges"]) > 1000


def test_the_implied_merges_are_transformers_order() -> None:
    """Ranked by score, ties (every score equal) kept in the vocabulary's order."""
    from transformers.tokenization_utils_base import generate_merges

    tokens = sentencepiece_metadata("llama")[f"{KEY}tokens"]
    vocabulary = {token: index for index, token in enumerate(tokens)}
    for scores in ({token: -index for index, token in enumerate(tokens)},
                   {token: float(index % 3) for index, token in enumerate(tokens)}):
        assert gguf_tokenizer.implied_merges(vocabulary, scores) == \
            generate_merges(vocabulary, scores)


def test_gemma_without_its_class_tokens_gets_none_past_the_models_rows(tmp_path: Path) -> None:
    """transformers' Gemma class adds its default special tokens the vocabulary lacks (here
    ``<pad>`` and ``<mask>``) past the model's rows, as the GPT-2 class adds ``<|endoftext|>``.
    Ours adds nothing, written or loaded; encoding and decoding are Gemma's."""
    metadata = sentencepiece_metadata("gemma3")
    metadata = {**metadata, f"{KEY}tokens": [{"<pad>": "<pad0>", "<mask>": "<mask0>"}.get(t, t)
                                             for t in metadata[f"{KEY}tokens"]]}
    rows = len(metadata[f"{KEY}tokens"])
    theirs, ours = both(metadata, tmp_path)
    past = [token for token in theirs["tokenizer.json"]["added_tokens"] if token["id"] >= rows]
    assert [token["content"] for token in past] == ["<pad>", "<mask>"]
    theirs["tokenizer.json"]["added_tokens"] = [
        token for token in theirs["tokenizer.json"]["added_tokens"] if token["id"] < rows]
    assert ours == theirs  # nothing else differs
    Tokenizer.record_class(tmp_path / "ours", "gemma3_text")
    tokenizer = Tokenizer.load(tmp_path / "ours")
    assert tokenizer.vocab_size == rows
    ids = tokenizer.encode("a  b <mask> c")
    assert max(ids) < rows and ids[0] == metadata[f"{KEY}bos_token_id"]
    spaces = metadata[f"{KEY}tokens"].index("  ")  # stored as spaces, spelled \u2581\u2581
    assert tokenizer.hf_tokenizer.convert_tokens_to_ids("\u2581\u2581") == spaces
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a  b <mask> c"


@pytest.mark.parametrize("vocabulary", ["byte-level", "sentencepiece"])
def test_the_helper_builds_a_vocabulary_without_transformers(tmp_path: Path,
                                                              vocabulary: str) -> None:
    """build_ahead's helper on the bundled file and on a Gemma 3 file of a SentencePiece
    vocabulary: its tokenizer written, no transformers (nor torch) imported, whose import
    alone took a cold start a second of a core."""
    path = loader.default_gguf() if vocabulary == "byte-level" else write_tokenizer_gguf(
        sentencepiece_metadata("gemma3"), tmp_path / "gemma.gguf")
    script = ("import runpy, sys; sys.argv = ['loader', sys.argv[1]]\n"
              "try:\n    runpy.run_module('core.models.loader', run_name='__main__')\n"
              "finally:\n    print(sorted({m.split('.')[0] for m in sys.modules} & "
              "{'transformers', 'torch'}))")
    done = subprocess.run([sys.executable, "-c", script, str(path)],
                          capture_output=True, text=True, timeout=60, check=True,
                          env={"INFERMCP_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "[]"
    assert [built.name for built in (tmp_path / "gguf").glob(f"*/{loader.CLASS_FILE}")]


def test_a_vocabulary_is_read_as_gguf_py_reads_it_and_a_spoilt_one_is_a_load_error(
        tmp_path: Path) -> None:
    path = write_tokenizer_gguf(sentencepiece_metadata("gemma3"), tmp_path / "vocabulary.gguf")
    fields = gguf.GGUFReader(path).fields
    metadata = map_header(path, gguf_tokenizer.ARRAYS).metadata
    for name in ("tokens", "scores", "token_type"):
        assert metadata[f"{KEY}{name}"] == pytest.approx(fields[f"{KEY}{name}"].contents())
    data = path.read_bytes()
    spoilt = {"cut": data[:data.index(b"<start_of_turn>") + 3],
              "not_utf8": data.replace(b"<think>", b"<\xffhink>")}
    for name, content in spoilt.items():
        (tmp_path / f"{name}.gguf").write_bytes(content)
        with pytest.raises(ModelLoadError, match=rf"{name}\.gguf: truncated or corrupt GGUF"):
            map_header(tmp_path / f"{name}.gguf", gguf_tokenizer.ARRAYS)


def test_a_vocabulary_that_cannot_be_built_is_a_load_error_naming_the_file(
        tmp_path: Path) -> None:
    """A bos id past the vocabulary: one ModelLoadError naming the file (the server's one
    line and exit code 2), no half-written tokenizer."""
    path = tmp_path / "bad_vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_merges(["a b"])
    writer.add_bos_token_id(99)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match=r"bad_vocab\.gguf: cannot read its GGUF metadata"):
        loader._write_tokenizer(path, tmp_path / "built")
    assert not (tmp_path / "built").exists()
