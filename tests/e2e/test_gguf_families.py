"""GGUF files of llama.cpp's gemma2, gemma3, phi3, granite, olmo2 and qwen3moe architectures,
written as its converter writes them (tiny random models with the bundled tokenizer), served by
the real server from one config: each in its own quantized format (Q8_0 or Q4_0) answers, and in
float32 the first token and its log-probability past the sliding windows are transformers' on
the file's weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from transformers import PreTrainedModel

from core.models.loader import gguf_metadata
from core.models.tokenizer import Tokenizer
from tests.core.models.gguf_files import round_trip, tiny_family, write_tiny_gguf
from tests.e2e.conftest import Server, serve_each_twice
from tests.e2e.test_families import check_served_like_transformers

# longer than the builders' sliding windows (6 tokens)
PROMPT = [504, 3458, 282, 4649, 314, 1638, 30, 198, 2683, 28, 451, 314]
# family: the file's type; its format in the server
FILES = {"gemma2": QType.Q8_0, "gemma3_text": QType.Q4_0, "phi3": QType.Q8_0,
         "granite": QType.Q8_0, "olmo2": QType.Q8_0, "qwen3_moe": QType.Q4_0}
FORMATS = {QType.Q8_0: "int8", QType.Q4_0: "int4"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, PreTrainedModel]]:
    folder = tmp_path_factory.mktemp("gguf-families")
    written = {}
    for name, qtype in FILES.items():
        model = tiny_family(name)
        path = write_tiny_gguf(folder / f"{name}.gguf", model, qtype)
        written[name] = (path, round_trip(model, qtype))
    return written


@pytest.fixture(scope="module")
def families_server(files: dict[str, tuple[Path, PreTrainedModel]],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Each file twice: in its own format (the default) and in float32 (``isq = "none"``)."""
    with serve_each_twice({name: path for name, (path, _) in files.items()},
                          tmp_path_factory.mktemp("gguf-families-server")) as running:
        yield running


def test_each_file_is_served_as_its_family_in_its_own_format(families_server: Server) -> None:
    cards = {c["id"]: c for c in httpx.get(f"{families_server.base_url}/v1/models").json()["data"]}
    for name, qtype in FILES.items():
        assert cards[name]["architecture"] == cards[f"{name}-f32"]["architecture"] == name
        assert cards[name]["quantization"] == FORMATS[qtype]
        assert cards[f"{name}-f32"]["quantization"] == "none"


@pytest.mark.parametrize("name", list(FILES))
def test_served_logprobs_equal_transformers_on_the_files_weights(
        families_server: Server, files: dict[str, tuple[Path, PreTrainedModel]], name: str) -> None:
    """In float32 the first token and its log-probability match transformers' model holding
    the file's dequantized weights to 1e-3; in the file's own format 8 tokens come."""
    path, reference = files[name]
    with torch.no_grad():
        expected = torch.log_softmax(reference(torch.tensor([PROMPT])).logits[0, -1].float(), -1)
    token_id = int(expected.argmax())
    tokenizer = Tokenizer.load(gguf_metadata(path))
    client = openai.OpenAI(base_url=f"{families_server.base_url}/v1", api_key="x", max_retries=0)
    exact = client.completions.create(model=f"{name}-f32", prompt=PROMPT, max_tokens=1,
                                      temperature=0, logprobs=1)
    logprobs = exact.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert logprobs.tokens[0] == tokenizer.token_text(token_id)
    assert logprobs.token_logprobs[0] == pytest.approx(float(expected[token_id]), abs=1e-3)
    native = client.completions.create(model=name, prompt=PROMPT, max_tokens=8, temperature=0)
    assert native.choices[0].finish_reason == "length" and native.usage is not None
    assert native.usage.completion_tokens == 8


@pytest.mark.parametrize("name", list(FILES))
def test_greedy_batched_and_cached_tokens_are_transformers(
        families_server: Server, files: dict[str, tuple[Path, PreTrainedModel]], name: str) -> None:
    """In float32, 32 greedy tokens equal transformers' generate on the file's weights, alone,
    8 at once, and with the prompt from the prefix cache."""
    path, reference = files[name]
    check_served_like_transformers(families_server, f"{name}-f32", reference,
                                   Tokenizer.load(gguf_metadata(path)))  # a 20-token prompt
