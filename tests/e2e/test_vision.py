"""Images in, through the real server, on tiny random vision checkpoints written here by
transformers: the first token's log-probability and 16 greedy tokens equal transformers' own
model on the same image, by chat completions and the Responses API (the ``openai`` client) and
the MCP ``chat`` tool (the MCP SDK client); two images in one request; a repeated image read
from the prefix cache; 8 image requests at once; and the bad inputs."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest
import torch
from mcp.client import Client

from core.models.tokenizer import Tokenizer
from tests.core.models.vision import tiny_gemma3, tiny_idefics3, tiny_qwen2_vl
from tests.core.models.vision.reference import Picture, picture, transformers_reference
from tests.e2e.conftest import Server, launch

# each family's tiny checkpoint writer (see tests/core/models/vision), by model type
FAMILIES: dict[str, Callable[[Path], Path]] = {
    "idefics3": tiny_idefics3.write,
    "smolvlm": partial(tiny_idefics3.write, model_type="smolvlm"),
    "qwen2_vl": partial(tiny_qwen2_vl.write, model_type="qwen2_vl"),
    "qwen2_5_vl": tiny_qwen2_vl.write,
    "gemma3": tiny_gemma3.write,
}
TOKENS = 16
QUESTION = "What is in the picture?"


class Images(BaseHTTPRequestHandler):
    """A local image host: GET /<name>.png answers the PNG the test put there."""

    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.files.get(self.path.lstrip("/"))
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    host = ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{host.server_address[1]}"
    host.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vision")


@pytest.fixture(scope="module")
def vision_server(folder: Path, image_host: str) -> Iterator[Server]:
    entries = []
    for name, write in FAMILIES.items():
        write(folder / name)
        entries.append(f'[[models]]\nid = "{name}"\npath = "{folder / name}"\nisq = "none"\n'
                       f'max_seq_len = 1024\nmax_seqs = 8\n')
    (folder / "models.toml").write_text("\n".join(entries))
    with launch(["--config", str(folder / "models.toml"), "--allow-image-urls", f"http://{image_host}/*",
                 "--max-images", "3",
                 "--max-image-pixels", "100000"], folder / "server.log") as server:
        yield server


def client_of(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0,
                         timeout=120)


def png(image: Picture) -> bytes:
    out = io.BytesIO()
    image.image.save(out, format="PNG")
    return out.getvalue()


def data_uri(image: Picture) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def chat(server: Server, name: str, urls: list[str], tokens: int = TOKENS, **extra: Any
         ) -> Any:
    content = [*(image_part(u) for u in urls), {"type": "text", "text": QUESTION}]
    return client_of(server).chat.completions.create(
        model=name, messages=[{"role": "user", "content": content}], max_tokens=tokens,
        temperature=0, logprobs=True, extra_body={"ignore_eos": True}, **extra)


def expected(folder: Path, name: str, pictures: list[Picture]) -> tuple[list[str], float]:
    """transformers' 16 greedy tokens' texts and its first token's log-probability."""
    tokenizer = Tokenizer.load(folder / name)
    tokens, logits = transformers_reference(folder / name, tokenizer, QUESTION, pictures, TOKENS)
    first = torch.log_softmax(logits, -1)[tokens[0]]
    return [tokenizer.token_text(t) for t in tokens], float(first)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_an_image_is_seen_as_transformers_sees_it(vision_server: Server, folder: Path,
                                                   name: str) -> None:
    image = picture(96, 72, seed=11)
    texts, first = expected(folder, name, [image])
    out = chat(vision_server, name, [data_uri(image)])
    content = out.choices[0].logprobs.content
    assert [t.token for t in content] == texts
    assert content[0].logprob == pytest.approx(first, abs=1e-3)
    card = next(c for c in client_of(vision_server).models.list().data if c.id == name)
    assert card.model_dump()["input_modalities"] == ["text", "image"]
    # the Responses API and the MCP chat tool read the same image the same way
    response = client_of(vision_server).responses.create(
        model=name, max_output_tokens=TOKENS, temperature=0,
        input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": data_uri(image), "detail": "auto"},
            {"type": "input_text", "text": QUESTION}]}],
        extra_body={"ignore_eos": True})
    assert response.output_text == "".join(texts)
    assert response.usage.input_tokens == out.usage.prompt_tokens
    counted = httpx.post(f"{vision_server.base_url}/tokenize", json={
        "model": name, "messages": [{"role": "user", "content": [
            image_part(data_uri(image)), {"type": "text", "text": QUESTION}]}]}).json()
    assert counted["count"] == out.usage.prompt_tokens  # the image's tokens counted
    assert mcp_chat(vision_server, name, image) == "".join(texts)


def mcp_chat(server: Server, name: str, image: Picture) -> str:
    async def call() -> str:
        async with Client(f"{server.base_url}/mcp", read_timeout_seconds=120) as client:
            result = await client.call_tool("chat", {
                "model": name, "max_tokens": TOKENS, "temperature": 0,
                "messages": [{"role": "user", "content": [
                    {"type": "image", "data": base64.b64encode(png(image)).decode(),
                     "mimeType": "image/png"},
                    {"type": "text", "text": QUESTION}]}]})
            assert not result.is_error, result.content
            return str(result.structured_content["choices"][0]["text"])  # type: ignore[index]

    return anyio.run(call)


def test_two_images_in_one_request(vision_server: Server, folder: Path) -> None:
    first, second = picture(40, 40, seed=12), picture(130, 60, seed=13)
    texts, _ = expected(folder, "idefics3", [first, second])
    out = chat(vision_server, "idefics3", [data_uri(first), data_uri(second)])
    assert [t.token for t in out.choices[0].logprobs.content] == texts


def test_a_repeated_image_is_read_from_the_cache(vision_server: Server) -> None:
    image = picture(64, 64, seed=14)
    once = chat(vision_server, "idefics3", [data_uri(image)], tokens=4)
    again = chat(vision_server, "idefics3", [data_uri(image)], tokens=4)
    assert again.choices[0].message.content == once.choices[0].message.content
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached >= (again.usage.prompt_tokens - 1) // 16 * 16 > 0
    other = chat(vision_server, "idefics3", [data_uri(picture(64, 64, seed=15))], tokens=4)
    assert other.usage.prompt_tokens_details.cached_tokens < cached  # the image's blocks differ


def test_eight_image_requests_at_once(vision_server: Server, folder: Path) -> None:
    images = [picture(64 + 8 * i, 64, seed=20 + i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda im: chat(vision_server, "idefics3", [data_uri(im)]),
                             images))
    for image, out in zip(images[:2], outs[:2], strict=True):  # two checked against transformers
        texts, _ = expected(folder, "idefics3", [image])
        assert [t.token for t in out.choices[0].logprobs.content] == texts
    assert all(len(o.choices[0].logprobs.content) == TOKENS for o in outs)


def test_an_allowed_url_is_fetched(vision_server: Server, image_host: str) -> None:
    image = picture(64, 64, seed=30)
    Images.files["cat.png"] = png(image)
    by_url = chat(vision_server, "idefics3", [f"http://{image_host}/cat.png"], tokens=4)
    by_data = chat(vision_server, "idefics3", [data_uri(image)], tokens=4)
    assert by_url.choices[0].message.content == by_data.choices[0].message.content


@pytest.mark.parametrize(("urls", "message", "param"), [
    (["data:image/png;base64,iVBORw0KGgoAAAAN"], "is not a PNG, JPEG, WebP or GIF image",
     "messages[0].content[0]"),
    (["http://example.com/cat.png"], "not allowed by its --allow-image-urls",
     "messages[0].content[0]"),
    ([data_uri(picture(8, 8, seed=1))] * 4, "at most 3 per request", "messages"),
    ([data_uri(picture(8, 8, seed=1)), data_uri(picture(400, 300, seed=2))], "pixels",
     "messages[0].content[1]"),
])
def test_bad_images_are_a_400(vision_server: Server, urls: list[str], message: str,
                              param: str) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        chat(vision_server, "idefics3", urls, tokens=2)
    body = error.value.body
    assert isinstance(body, dict) and body["param"] == param, json.dumps(body)
    assert message in body["message"]
