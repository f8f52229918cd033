"""POST /v1/embeddings on the bundled all-MiniLM-L6-v2 through the `openai` client."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from core.models import loader
from core.models.tokenizer import Tokenizer
from tests.e2e.conftest import Server
from tests.e2e.test_errors import assert_envelope

EMBED = "/v1/embeddings"
TEXTS = [
    "A man is playing a guitar on stage.",
    "The weather today is sunny and warm.",
    "Quantum computers use qubits.",
    "hi",
]
LONG = "the quick brown fox jumps over the lazy dog " * 80  # ~720 tokens > 256


@pytest.fixture(scope="module")
def st_model() -> Any:
    """sentence-transformers itself on the same model directory: the reference."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(loader.default_embedding_dir()), device="cpu")


@pytest.fixture(scope="module")
def enc_tokenizer() -> Tokenizer:
    return Tokenizer.load(loader.default_embedding_dir())


def vectors(client: openai.OpenAI, inputs: Any, **kwargs: Any) -> np.ndarray:
    reply = client.embeddings.create(model="default", input=inputs, **kwargs)
    return np.array([d.embedding for d in reply.data], dtype=np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_float_and_base64_decode_to_the_same_vectors(client: openai.OpenAI) -> None:
    as_float = vectors(client, TEXTS, encoding_format="float")
    by_default = vectors(client, TEXTS)  # the client asks for base64 and decodes it itself
    asked = client.embeddings.create(model="default", input=TEXTS, encoding_format="base64")
    as_base64 = np.array([np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4")
                          for d in asked.data], dtype=np.float64)
    assert as_float.shape == (len(TEXTS), 384)
    assert np.array_equal(as_float, by_default) and np.array_equal(as_float, as_base64)


def test_raw_base64_is_little_endian_float32(server: Server) -> None:
    body = {"input": "hello", "encoding_format": "base64"}
    b64 = httpx.post(f"{server.base_url}{EMBED}", json=body).json()["data"][0]["embedding"]
    floats = httpx.post(f"{server.base_url}{EMBED}", json={"input": "hello"}).json()
    decoded = np.frombuffer(base64.b64decode(b64), dtype="<f4")
    assert decoded.tolist() == floats["data"][0]["embedding"]


def test_paraphrase_ranks_above_unrelated(client: openai.OpenAI) -> None:
    anchor, paraphrase, unrelated = vectors(client, [
        "How do I reset my password?",
        "What are the steps to change my login password?",
        "The giraffe is the tallest land animal.",
    ])
    assert cosine(anchor, paraphrase) > cosine(anchor, unrelated) + 0.3
    assert np.allclose(np.linalg.norm([anchor, paraphrase, unrelated], axis=1), 1, atol=1e-5)


def test_equals_sentence_transformers(client: openai.OpenAI, st_model: Any) -> None:
    ours = vectors(client, TEXTS)
    reference = st_model.encode(TEXTS, convert_to_numpy=True)
    assert np.abs(ours - reference).max() < 1e-5


def test_truncation_drops_tokens_from_the_end(client: openai.OpenAI, st_model: Any) -> None:
    # sentence-transformers keeps the first 256 tokens; so must truncate_sequence.
    ours = vectors(client, [LONG], extra_body={"truncate_sequence": True})
    reference = st_model.encode([LONG], convert_to_numpy=True)
    assert np.abs(ours - reference).max() < 1e-5
    head = vectors(client, [" ".join(LONG.split()[:200])])
    assert cosine(ours[0], head[0]) > 0.9


def test_token_ids_equal_strings(client: openai.OpenAI, enc_tokenizer: Tokenizer) -> None:
    ids = [enc_tokenizer.encode(t, add_special_tokens=False) for t in TEXTS]
    from_text = vectors(client, TEXTS)
    from_ids = vectors(client, ids)
    assert np.abs(from_text - from_ids).max() < 1e-6
    one = vectors(client, ids[0])  # one flat list of ids is one input
    assert np.abs(one[0] - from_text[0]).max() < 1e-6


def test_usage_counts_every_token(client: openai.OpenAI, enc_tokenizer: Tokenizer) -> None:
    reply = client.embeddings.create(model="default", input=TEXTS)
    expected = sum(len(enc_tokenizer.encode(t)) for t in TEXTS)  # [CLS] and [SEP] included
    assert reply.usage.prompt_tokens == expected == reply.usage.total_tokens
    assert reply.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert [d.index for d in reply.data] == list(range(len(TEXTS)))


def test_named_model_and_matching_dimensions(client: openai.OpenAI, server: Server) -> None:
    reply = client.embeddings.create(model=server.embedding_model_id, input="x", dimensions=384)
    assert len(reply.data[0].embedding) == 384


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"input": ""}, 400, None),
    ({"input": []}, 400, None),
    ({"input": ["ok", ""]}, 400, None),
    ({"input": [[]]}, 400, None),
    ({"input": ["x"] * 2049}, 400, None),
    ({"input": LONG}, 400, "context_length_exceeded"),
    ({"input": "x", "dimensions": 128}, 400, "unsupported_parameter"),
    ({"input": "x", "encoding_format": "int8"}, 400, None),
    ({"input": 5}, 400, None),
    ({"input": ["a", [1, 2]]}, 400, None),
    ({"input": [[1, 99999999]]}, 400, None),
    ({"input": "x", "truncate_sequence": "yes"}, 400, None),
    ({"input": "x", "model": "HuggingFaceTB/SmolLM2-135M-Instruct"}, 400, "model_not_supported"),
    ({"input": "x", "model": "nope"}, 404, "model_not_found"),
])
def test_bad_requests(server: Server, body: dict[str, Any], status: int,
                      code: str | None) -> None:
    r = httpx.post(f"{server.base_url}{EMBED}", json=body, timeout=60)
    error = assert_envelope(r, status, code)
    assert error["param"] in ("input", "model", "dimensions", "encoding_format",
                              "truncate_sequence")


def test_errors_name_the_models_that_can_serve(server: Server, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as chat_to_encoder:
        client.chat.completions.create(model=server.embedding_model_id, max_tokens=1,
                                       messages=[{"role": "user", "content": "hi"}])
    assert server.model_id in chat_to_encoder.value.message
    with pytest.raises(openai.BadRequestError) as embed_with_chat:
        client.embeddings.create(model=server.model_id, input="hi")
    assert server.embedding_model_id in embed_with_chat.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert server.model_id in unknown.value.message
    assert server.embedding_model_id in unknown.value.message


def encoder_stats(server: Server) -> dict[str, int]:
    models = server.health()["models"]
    return models[server.embedding_model_id]["encoder"]  # type: ignore[index, no-any-return]


def test_many_inputs_share_one_forward_pass(client: openai.OpenAI, server: Server) -> None:
    before = encoder_stats(server)["batches"]
    texts = [f"sentence number {i}" for i in range(24)]
    batched = vectors(client, texts)
    assert encoder_stats(server)["batches"] == before + 1
    alone = np.concatenate([vectors(client, [t]) for t in texts[:3]])
    assert np.abs(batched[:3] - alone).max() < 1e-5  # padding does not change a vector


async def test_concurrent_requests_are_batched(aclient: openai.AsyncOpenAI,
                                               server: Server) -> None:
    before = encoder_stats(server)["batches"]
    texts = [f"request {i} says hello to the batcher" for i in range(16)]
    replies = await asyncio.gather(*(aclient.embeddings.create(model="default", input=t)
                                     for t in texts))
    assert all(len(r.data) == 1 for r in replies)
    stats = encoder_stats(server)
    assert stats["batches"] - before < len(texts)
    assert stats["max_batch_rows"] > 1


async def test_chat_and_embeddings_in_one_process(aclient: openai.AsyncOpenAI,
                                                  server: Server) -> None:
    chat, emb = await asyncio.gather(
        aclient.chat.completions.create(model="default", max_tokens=8, temperature=0,
                                        messages=[{"role": "user", "content": "Say hi"}]),
        aclient.embeddings.create(model="default", input=["one", "two"]))
    assert chat.model == server.model_id and chat.choices[0].message.content
    assert emb.model == server.embedding_model_id and len(emb.data) == 2
    cards = {c["id"]: c for c in httpx.get(f"{server.base_url}/v1/models").json()["data"]}
    assert cards[server.model_id]["kind"] == "chat"
    assert cards[server.model_id]["max_model_len"] == 1024
    assert cards[server.embedding_model_id]["kind"] == "embedding"
    assert cards[server.embedding_model_id]["max_model_len"] == 256
    health = server.health()
    assert health["status"] == "ok"
    assert {m: r["status"] for m, r in health["models"].items()} == {  # type: ignore[attr-defined]
        server.model_id: "ok", server.embedding_model_id: "ok"}
