"""A server started from a models.toml with two chat models (one checkpoint, shared weights)
and the embedding model: routing by id, alias and "default"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import Server, launch

CONFIG = """
[[models]]
id = "smol-a"
kind = "chat"
aliases = ["a"]
max_seq_len = 256
max_seqs = 2
kv_cache_tokens = 512

[[models]]
id = "smol-b"
kind = "chat"
path = "default"
max_seq_len = 128
max_seqs = 2
kv_cache_tokens = 256
default = true

[[models]]
kind = "embedding"
aliases = ["minilm"]
"""
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def config_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("config-server")
    (folder / "models.toml").write_text(CONFIG)
    with launch(["--config", str(folder / "models.toml"), "--seed", "0"],
                folder / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def config_client(config_server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{config_server.base_url}/v1", api_key="unused",
                         max_retries=0, timeout=120)


def reply(client: openai.OpenAI, model: str) -> tuple[str, str]:
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8,
                                       temperature=0)
    return r.model, r.choices[0].message.content or ""


def test_models_lists_every_model_with_kind_and_context(config_server: Server) -> None:
    data = httpx.get(f"{config_server.base_url}/v1/models").json()["data"]
    summary = {c["id"]: (c["kind"], c["max_model_len"], c["aliases"]) for c in data}
    assert summary == {
        "smol-a": ("chat", 256, ["a"]),
        "smol-b": ("chat", 128, []),
        "sentence-transformers/all-MiniLM-L6-v2": ("embedding", 256, ["minilm"]),
    }
    health = httpx.get(f"{config_server.base_url}/health").json()
    assert health["status"] == "ok" and health["model"] == "smol-b"
    assert set(health["models"]) == set(summary)


def test_routing_by_id_alias_and_default(config_client: openai.OpenAI) -> None:
    model_a, text_a = reply(config_client, "smol-a")
    model_b, text_b = reply(config_client, "smol-b")
    assert (model_a, model_b) == ("smol-a", "smol-b")
    assert text_a and text_a == text_b  # the same weights, greedy
    assert reply(config_client, "a") == (model_a, text_a)
    assert reply(config_client, "default")[0] == "smol-b"
    emb = config_client.embeddings.create(model="minilm", input="hello")
    assert emb.model == "sentence-transformers/all-MiniLM-L6-v2"


def test_each_model_keeps_its_own_context_length(config_client: openai.OpenAI) -> None:
    prompt = "word " * 180  # fits smol-a (256) but not smol-b (128)
    config_client.completions.create(model="smol-a", prompt=prompt, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as too_long:
        config_client.completions.create(model="smol-b", prompt=prompt, max_tokens=2)
    assert "128" in too_long.value.message


def test_routing_errors(config_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        reply(config_client, "smol-c")
    for name in ("smol-a", "smol-b", "sentence-transformers/all-MiniLM-L6-v2"):
        assert name in unknown.value.message
    with pytest.raises(openai.BadRequestError) as wrong_kind:
        reply(config_client, "minilm")
    assert "smol-a" in wrong_kind.value.message and "smol-b" in wrong_kind.value.message
    with pytest.raises(openai.BadRequestError) as wrong_kind:
        config_client.embeddings.create(model="a", input="x")
    assert "all-MiniLM-L6-v2" in wrong_kind.value.message


def test_second_chat_model_shares_the_weights(config_server: Server) -> None:
    # Two float32 copies of SmolLM2-135M would be ~1.1 GB of weights; one is ~0.54 GB.
    status = Path(f"/proc/{config_server.pid}/status").read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines()
                      if line.startswith("VmRSS:")))
    assert rss_kb < 1_500_000, f"server RSS {rss_kb} kB"
