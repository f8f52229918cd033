"""Each model family served by the real server from a tiny random Hugging Face checkpoint
(written here by transformers, with the bundled tokenizer): the first token's log-probability
equals transformers', 32 greedy tokens equal transformers' ``generate``, and the same tokens come
when 8 requests run together and when the prompt is read from the prefix cache."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import torch
from transformers import PreTrainedModel

from core.models.loader import default_gguf, gguf_metadata
from core.models.tokenizer import Tokenizer
from tests.core.models.gguf_files import VOCAB_SIZE
from tests.core.models.test_families import build
from tests.e2e.conftest import Server, launch

# each tiny checkpoint (see tests.core.models.test_families) and its model type
FAMILIES = {"llama3": "llama", "qwen3": "qwen3", "qwen3_moe": "qwen3_moe",
            "mistral-window": "mistral", "gemma2": "gemma2", "gemma3_text": "gemma3_text",
            "phi3": "phi3", "granite": "granite", "olmo2": "olmo2"}
# 20 tokens: past the sliding windows of the tiny models (6)
PROMPT = [504, 3458, 282, 4649, 314, 1638, 30, 198, 1206, 314, 253, 1789, 282, 260, 2517, 28,
          4649, 314, 1638, 30]
NUM_TOKENS = 32
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "infermcp_tokenizer.json")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def models(folder: Path) -> dict[str, PreTrainedModel]:
    """Each family's tiny checkpoint, written into ``folder`` beside the bundled model's
    tokenizer."""
    tokenizer_dir = gguf_metadata(default_gguf())
    written = {}
    for name in FAMILIES:
        model = build(name, VOCAB_SIZE)
        model.save_pretrained(folder / name)
        for file in TOKENIZER_FILES:
            if (tokenizer_dir / file).is_file():
                shutil.copy(tokenizer_dir / file, folder / name / file)
        written[name] = model
    return written


@pytest.fixture(scope="module")
def family_server(models: dict[str, PreTrainedModel], folder: Path) -> Iterator[Server]:
    entries = [f'[[models]]\nid = "{name}"\npath = "{folder / name}"\nisq = "none"\n'
               f'max_seq_len = 256\nmax_seqs = 8\n' for name in models]
    config = folder / "models.toml"
    config.write_text("\n".join(entries))
    with launch(["--config", str(config)],
                folder / "server.log") as server:
        yield server


def client_of(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0,
                         timeout=120)


def greedy_tokens(server: Server, name: str) -> tuple[list[str], int]:
    """32 greedy tokens' texts and how many prompt tokens came from the prefix cache."""
    out = client_of(server).completions.create(
        model=name, prompt=PROMPT, max_tokens=NUM_TOKENS, temperature=0, logprobs=1,
        extra_body={"ignore_eos": True})
    logprobs, usage = out.choices[0].logprobs, out.usage
    assert logprobs is not None and logprobs.tokens is not None and usage is not None
    details = usage.prompt_tokens_details
    return logprobs.tokens, details.cached_tokens or 0 if details is not None else 0


def test_the_cards_name_each_architecture(family_server: Server) -> None:
    cards = httpx.get(f"{family_server.base_url}/v1/models").json()["data"]
    assert {c["id"]: c["architecture"] for c in cards} == FAMILIES


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_serves_what_transformers_computes(family_server: Server,
                                                    models: dict[str, PreTrainedModel],
                                                    name: str) -> None:
    model = models[name]
    tokenizer = Tokenizer.load(gguf_metadata(default_gguf()))
    with torch.no_grad():
        first = torch.log_softmax(model(torch.tensor([PROMPT])).logits[0, -1].float(), -1)
        generated = model.generate(torch.tensor([PROMPT]), max_new_tokens=NUM_TOKENS,
                                   min_new_tokens=NUM_TOKENS, do_sample=False)[0, len(PROMPT):]
    expected = [tokenizer.token_text(int(t)) for t in generated]
    one = client_of(family_server).completions.create(
        model=name, prompt=PROMPT, max_tokens=1, temperature=0, logprobs=1)
    assert one.choices[0].logprobs is not None and one.choices[0].logprobs.token_logprobs
    token_id = int(first.argmax())
    assert one.choices[0].logprobs.token_logprobs[0] == pytest.approx(float(first[token_id]),
                                                                      abs=1e-3)
    with ThreadPoolExecutor(8) as pool:  # 8 at once: batched decode steps
        batched = list(pool.map(lambda _: greedy_tokens(family_server, name), range(8)))
    for tokens, _ in batched:
        assert tokens == expected
    tokens, cached = greedy_tokens(family_server, name)  # the prompt's blocks are cached now
    assert cached >= 16 and tokens == expected
