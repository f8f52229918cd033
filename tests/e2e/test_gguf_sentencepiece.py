"""GGUF files of SentencePiece vocabularies (Llama 2's shape, Phi-3's and Gemma 3's), served by
the real server: the tokenizer it builds from each file's metadata with the tokenizers library
alone encodes, decodes and renders chats as transformers' conversion of the same file does, and
each model answers a chat."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from gguf import GGMLQuantizationType as QType
from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES

from core.models import gguf_tokenizer, loader
from core.models.gguf_header import map_header
from core.models.tokenizer import Tokenizer
from tests.core.models.gguf_files import (
    TOKENIZER_KEY,
    sentencepiece_metadata,
    tiny_family,
    tiny_llama,
    write_tiny_gguf,
    write_tokenizer_gguf,
)
from tests.e2e.conftest import Server, launch

# model type: llama.cpp's architecture
FAMILIES = {"llama": "llama", "phi3": "phi3", "gemma3_text": "gemma3"}
# two spaces, a blank line, bytes the vocabulary spells only as <0xNN>, a control and a
# user-defined token the text spells
TEXT = "Hello  world,\n\nthe naïve café ☕ <start_of_turn>serve <think> it"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf-sentencepiece")
    written = {}
    for model_type, arch in FAMILIES.items():
        metadata = sentencepiece_metadata(arch)
        vocabulary = write_tokenizer_gguf(metadata, folder / f"{arch}-vocabulary.gguf")
        rows = len(metadata[f"{TOKENIZER_KEY}tokens"])
        model = tiny_llama(vocab=rows) if model_type == "llama" else tiny_family(model_type, rows)
        written[model_type] = write_tiny_gguf(folder / f"{arch}.gguf", model, QType.Q8_0,
                                              tokenizer_from=vocabulary)
    return written


@pytest.fixture(scope="module")
def server(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("gguf-sentencepiece-server")
    config = folder / "models.toml"
    config.write_text("\n".join(f'[[models]]\nid = "{name}"\npath = "{path}"\nmax_seq_len = 256\n'
                                f'max_seqs = 2\n' for name, path in files.items()))
    for path in files.values():  # built by this server, not found from an earlier run
        shutil.rmtree(loader.metadata_dir(path), ignore_errors=True)
    with launch(["--config", str(config)], folder / "server.log") as running:
        assert all((loader.metadata_dir(path) / loader.CLASS_FILE).is_file()
                   for path in files.values())
        yield running


def transformers_tokenizer(path: Path, model_type: str, folder: Path) -> Tokenizer:
    """transformers' conversion of the file's tokenizer, loaded by the class AutoTokenizer
    picks for the model type (Gemma's: GemmaTokenizer, where the server reads its own files
    through the plain backend)."""
    metadata = dict(map_header(path, gguf_tokenizer.ARRAYS).metadata)
    loader._convert_tokenizer(metadata, FAMILIES[model_type], folder)
    name = TOKENIZER_MAPPING_NAMES.get(model_type) or "TokenizersBackend"
    (folder / loader.CLASS_FILE).write_text(json.dumps({"tokenizer_class": name}))
    return Tokenizer.load(folder)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_served_tokenizer_is_transformers_conversion_of_the_file(
        server: Server, files: dict[str, Path], tmp_path: Path, name: str) -> None:
    theirs = transformers_tokenizer(files[name], name, tmp_path)
    url = server.base_url
    ids = httpx.post(f"{url}/tokenize", json={"model": name, "prompt": TEXT}).json()["tokens"]
    assert ids == theirs.encode(TEXT)
    metadata = sentencepiece_metadata(FAMILIES[name])
    tokens = metadata[f"{TOKENIZER_KEY}tokens"]
    assert ids[0] == metadata[f"{TOKENIZER_KEY}bos_token_id"]  # the file adds bos
    assert {tokens.index("<start_of_turn>"), tokens.index("<think>")} <= set(ids)  # whole
    assert tokens.index("<0xE2>") in ids  # the cup, spelled in bytes
    text = httpx.post(f"{url}/detokenize", json={"model": name, "tokens": ids}).json()["prompt"]
    assert text == theirs.decode(ids, skip_special_tokens=False)
    assert "Hello  world,\n\nthe naïve café ☕ <start_of_turn>" in text  # bytes fused back
    messages = [{"role": "user", "content": TEXT}]
    chat = httpx.post(f"{url}/tokenize", json={"model": name, "messages": messages}).json()
    assert chat["tokens"] == theirs.encode_chat(messages)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_model_answers_a_chat(server: Server, name: str) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    # its vocabulary is trained on the README, so each edit of it makes another model, whose
    # random weights may end the turn early: 8 tokens are asked for whatever they pick
    reply = client.chat.completions.create(model=name, max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": TEXT}],
                                           extra_body={"ignore_eos": True})
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert reply.choices[0].finish_reason == "length"
    assert isinstance(reply.choices[0].message.content, str)
