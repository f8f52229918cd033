"""A byte-level BPE vocabulary's tokenizer written by the tokenizers library alone: the files
transformers' GGUF conversion writes from the same metadata, for each way the metadata can
vary, but one deliberate difference; and the helper that builds it imports no transformers."""

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
    """The files transformers writes for ``metadata``, and ours."""
    (tmp_path / "theirs").mkdir()
    (tmp_path / "ours").mkdir()
    loader._convert_tokenizer(metadata, "llama", tmp_path / "theirs")
    gguf_tokenizer.write(metadata, tmp_path / "ours")
    return files(tmp_path / "theirs"), files(tmp_path / "ours")


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


def test_the_splits_are_those_transformers_names() -> None:
    assert dict(GGUF_PRE_TOKENIZER_SPLITS) == gguf_tokenizer.SPLITS


def test_the_byte_alphabet_is_gpt2s() -> None:
    assert gguf_tokenizer.byte_alphabet() == bytes_to_unicode()


def test_only_a_byte_level_vocabulary_is_built_here(bundled: dict[str, Any]) -> None:
    assert gguf_tokenizer.builds(bundled)
    assert not gguf_tokenizer.builds({**bundled, f"{KEY}model": "llama"})


def test_the_helper_builds_a_byte_level_vocabulary_without_transformers(tmp_path: Path) -> None:
    """build_ahead's helper on the bundled file: its tokenizer written, no transformers (nor
    torch) imported, whose import alone took a cold start a second of a core."""
    script = ("import runpy, sys; sys.argv = ['loader', sys.argv[1]]\n"
              "try:\n    runpy.run_module('core.models.loader', run_name='__main__')\n"
              "finally:\n    print(sorted({m.split('.')[0] for m in sys.modules} & "
              "{'transformers', 'torch'}))")
    done = subprocess.run([sys.executable, "-c", script, str(loader.default_gguf())],
                          capture_output=True, text=True, timeout=60, check=True,
                          env={"INFERMCP_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "[]"
    assert [built.name for built in (tmp_path / "gguf").glob(f"*/{loader.CLASS_FILE}")]


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
