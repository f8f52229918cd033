"""A GGUF's metadata made into a model directory: its tokenizer, built the fast way, is the
one transformers' AutoTokenizer builds from the same file (4.5 s to build for a 1B model), once
saved and loaded again by AutoTokenizer, in the same class."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as QType
from transformers import AutoTokenizer
from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

from core.errors import ModelLoadError
from core.models import gguf_tokenizer, loader
from core.models.gguf_config import ARCHITECTURES
from core.models.gguf_header import map_header
from core.models.tokenizer import CLASS_FILE, GGUF_TOKENIZER_CLASSES, Tokenizer
from tests.core.models.gguf_files import (
    VOCAB_SIZE,
    sentencepiece_metadata,
    tiny_qwen2,
    write_tiny_gguf,
)

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


def test_the_tokenizer_classes_of_gguf_model_types_are_transformers_own() -> None:
    """The classes recorded for a GGUF's tokenizer, without transformers' table (it imports
    torch), are those its table names for every model type a GGUF file can have, but Gemma's
    (the plain backend: below)."""
    for spec in ARCHITECTURES.values():
        theirs = TOKENIZER_MAPPING_NAMES.get(spec.model_type) or "TokenizersBackend"
        if theirs == "GemmaTokenizer":
            theirs = "TokenizersBackend"
        assert GGUF_TOKENIZER_CLASSES.get(spec.model_type, "TokenizersBackend") == theirs, \
            spec.model_type


@pytest.mark.parametrize("vocabulary", ["llama", "gpt2"])
def test_a_gemma_files_tokenizer_reads_through_the_backend_as_through_gemmas_class(
        tmp_path: Path, vocabulary: str) -> None:
    """A Gemma file's tokenizer (SentencePiece, as Gemma's are; or byte-level, as the bench's
    synthetic files) is recorded for the plain backend. For a SentencePiece vocabulary it
    reads as Gemma's class reads the same files: ids, text, special tokens, chats. (A
    byte-level one Gemma's class would split wrongly at its spaces.)"""
    if vocabulary == "llama":
        metadata = sentencepiece_metadata("gemma3")
    else:
        metadata = dict(map_header(loader.default_gguf(), gguf_tokenizer.ARRAYS).metadata)
    gguf_tokenizer.write(metadata, tmp_path)
    Tokenizer.record_class(tmp_path, "gemma3_text")
    ours = Tokenizer.load(tmp_path)
    assert type(ours.hf_tokenizer).__name__ == "TokenizersBackend"
    texts = ["Hello  world,\n\nthe naïve café ☕", "  lead", "<start_of_turn>user\nhi <think>",
             "trailing  "]
    if vocabulary == "gpt2":
        assert [ours.decode(ours.encode(t, False)) for t in texts] == texts
        return
    (tmp_path / CLASS_FILE).write_text(json.dumps({"tokenizer_class": "GemmaTokenizer"}))
    gemmas = Tokenizer.load(tmp_path)
    assert type(gemmas.hf_tokenizer).__name__ == "GemmaTokenizer"
    for text in texts:
        ids = ours.encode(text)
        assert ids == gemmas.encode(text)
        for skip in (True, False):
            assert ours.decode(ids, skip) == gemmas.decode(ids, skip)
    messages = [{"role": "user", "content": texts[0]}]
    assert ours.encode_chat(messages) == gemmas.encode_chat(messages)
    def specials(tokenizer: Tokenizer) -> dict[int, str]:  # what decoding skips, grammars fence
        return {i: t.content for i, t in tokenizer.hf_tokenizer.added_tokens_decoder.items()
                if t.special}

    assert specials(ours) == specials(gemmas)
    assert {"<bos>", "<eos>", "<mask>", "<start_of_turn>"} <= set(specials(ours).values())
    assert ours.vocab_size == gemmas.vocab_size == len(metadata["tokenizer.ggml.tokens"])


def test_a_helper_builds_the_metadata_ahead_and_the_loader_waits_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """build_ahead's helper process holds the build's lock from its start: while the test holds
    it, the helper writes nothing; released, it builds the tokenizer, which gguf_metadata then
    finds (it would wait on the same lock) beside the config it writes itself."""
    monkeypatch.setenv("INFERMCP_CACHE_DIR", str(tmp_path / "cache"))  # the helper's too
    path = write_tiny_gguf(tmp_path / "qwen2.gguf", tiny_qwen2(vocab=VOCAB_SIZE), QType.Q4_0)
    target = loader.metadata_dir(path)
    with loader._building(target):
        helper = loader.build_ahead(str(path))
        assert helper is not None
        with pytest.raises(subprocess.TimeoutExpired):
            helper.wait(timeout=3)  # waiting for the lock
        assert not target.exists()
    assert helper.wait(timeout=120) == 0
    assert (target / CLASS_FILE).is_file() and not (target / "config.json").exists()
    assert loader.gguf_metadata(path) == target
    assert json.loads((target / "config.json").read_text())["model_type"] == "qwen2"
    assert Tokenizer.load(target).encode("Hello world")
    assert loader.build_ahead(str(path)) is None  # built already
    assert loader.build_ahead(str(tmp_path)) is None  # not a GGUF file


def test_a_helper_given_a_corrupt_file_leaves_the_error_to_the_loader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERMCP_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(20))
    helper = loader.build_ahead(str(path))
    assert helper is not None and helper.wait(timeout=120) == 2
    assert not loader.metadata_dir(path).exists()
    with pytest.raises(ModelLoadError, match=r"broken\.gguf"):
        loader.gguf_metadata(path)
