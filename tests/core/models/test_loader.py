"""A GGUF's metadata made into a model directory: its tokenizer, built the fast way, is the
one transformers' AutoTokenizer builds from the same file (4.5 s to build for a 1B model), once
saved and loaded again by AutoTokenizer, in the same class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as QType
from transformers import AutoTokenizer

from core.models import loader
from core.models.tokenizer import Tokenizer
from tests.core.models.gguf_files import VOCAB_SIZE, tiny_qwen2, write_tiny_gguf

TEXT = "Hello  world! <|im_start|>user\nÜnïcode 123 \t tabs  \n\n  end<|im_end|>"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_cached_tokenizer_is_autotokenizers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                arch: str) -> None:
    monkeypatch.setenv("INFERMCP_CACHE_DIR", str(tmp_path / "cache"))
    path = loader.default_gguf() if arch == "llama" else write_tiny_gguf(
        tmp_path / "qwen2.gguf", tiny_qwen2(vocab=VOCAB_SIZE), QType.Q4_0)
    ours = Tokenizer.load(loader.gguf_metadata(path)).hf_tokenizer
    built = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    built.save_pretrained(str(tmp_path / "auto"))
    (tmp_path / "auto" / "config.json").write_bytes(
        (loader.gguf_metadata(path) / "config.json").read_bytes())
    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "auto"))
    assert type(ours) is type(theirs)  # the class AutoTokenizer picks, without its config
    assert json.loads(ours.backend_tokenizer.to_str()) == \
        json.loads(theirs.backend_tokenizer.to_str())
    ids = ours.encode(TEXT)
    assert ids == theirs.encode(TEXT)
    assert ours.decode(ids) == theirs.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == \
        theirs.decode(ids, skip_special_tokens=True)
    assert ours.special_tokens_map == theirs.special_tokens_map
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TEXT}]
    assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (tmp_path / "cache" / "gguf").is_dir()  # written once, under the cache directory


def test_a_byte_level_vocabulary_under_gemma_reads_as_its_own(tmp_path: Path) -> None:
    """A Gemma-architecture file with a BPE vocabulary (the bench's synthetic ones): Gemma's
    SentencePiece class would split its spaces wrongly; the plain backend round-trips text."""
    Tokenizer.record_class(tmp_path, "gemma3_text", "gpt2")
    assert json.loads((tmp_path / "infermcp_tokenizer.json").read_text()) == {
        "tokenizer_class": "TokenizersBackend"}
    Tokenizer.record_class(tmp_path, "gemma3_text", "llama")  # a real Gemma file's
    assert json.loads((tmp_path / "infermcp_tokenizer.json").read_text())[
        "tokenizer_class"] != "TokenizersBackend"
