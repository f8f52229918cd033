"""POST /v1/chat/completions with image parts, over fake models that read images or not."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from core.chat.images import ImagePolicy
from core.serving.registry import ModelEntry, ModelRegistry
from http_api.app import create_app
from tests.http_api.fakes import FakeModel, running

CHAT = "/v1/chat/completions"


def png_uri(size: tuple[int, int] = (4, 3)) -> str:
    out = io.BytesIO()
    Image.new("RGB", size, "red").save(out, "PNG")
    return f"data:image/png;base64,{base64.b64encode(out.getvalue()).decode()}"


def ask(*parts: dict[str, Any], model: str = "seer") -> dict[str, Any]:
    return {"model": model, "max_tokens": 3, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What?"}, *parts]}]}


def image(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


@pytest.fixture(scope="module")
def models() -> tuple[FakeModel, FakeModel]:
    return FakeModel(id="seer", input_modalities=("text", "image")), FakeModel(id="reader")


@pytest.fixture(scope="module")
def client(models: tuple[FakeModel, FakeModel]) -> Iterator[TestClient]:
    seer, reader = models
    registry = ModelRegistry([ModelEntry("seer", "chat", lambda: seer),
                              ModelEntry("reader", "chat", lambda: reader)],
                             image_policy=ImagePolicy(max_images=2))
    with running(create_app(registry)) as client:
        yield client


def error(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(CHAT, json=body)
    assert r.status_code == 400, r.text
    return dict(r.json()["error"])


def test_an_image_reaches_a_model_that_reads_images(
        client: TestClient, models: tuple[FakeModel, FakeModel]) -> None:
    r = client.post(CHAT, json=ask(image(png_uri((5, 2)), detail="low")))
    assert r.status_code == 200, r.text
    prompt = "".join(chr(i) for i in models[0].engine.requests[-1].prompt_token_ids)
    assert prompt == "What?<image 5x2>"


def test_a_model_that_reads_only_text_names_its_modalities(client: TestClient) -> None:
    found = error(client, ask(image(png_uri()), model="reader"))
    assert found["param"] == "messages[0].content[1]"
    assert found["code"] == "unsupported_parameter"
    assert "'reader' reads only text (its input modalities: text)" in found["message"]


@pytest.mark.parametrize(("part", "param", "words"), [
    (image("data:image/png;base64,AAAA"), "messages[0].content[1]", "not a PNG, JPEG"),
    (image("https://example.com/cat.png"), "messages[0].content[1]", "does not fetch"),
    ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
     "messages[0].content[1]", "(its input modalities: text, image); audio is not supported"),
])
def test_bad_parts_are_a_400_naming_the_part(client: TestClient, part: dict[str, Any],
                                             param: str, words: str) -> None:
    found = error(client, ask(part))
    assert found["param"] == param and words in found["message"]


def test_too_many_images_is_a_400(client: TestClient) -> None:
    found = error(client, ask(*[image(png_uri())] * 3))
    assert found["param"] == "messages" and "at most 2 per request" in found["message"]


def test_tokenize_counts_the_images_as_a_chat_request_does(client: TestClient) -> None:
    r = client.post("/tokenize", json={"model": "seer", "messages": ask(image(png_uri()))[
        "messages"]})
    assert r.status_code == 200 and "".join(map(chr, r.json()["tokens"])) == "What?<image 4x3>"
