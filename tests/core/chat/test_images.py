"""Images at the edge: data URIs decoded, URLs fetched from a real local server, limits."""

from __future__ import annotations

import base64
import gzip
import io
import json
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from core.chat.images import (
    ImageData,
    ImagePolicy,
    decode_data_uri,
    images_of,
    load_image,
    load_images,
    storable,
)
from core.errors import InvalidRequestError

RED, BLUE = (255, 0, 0), (0, 0, 255)
VISION = ("text", "image")
WHERE = "messages[0].content[1]"


def encoded(fmt: str, size: tuple[int, int] = (4, 3), color: Any = RED, mode: str = "RGB",
            **save: Any) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, fmt, **save)
    return out.getvalue()


def uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def decode(url: str, policy: ImagePolicy | None = None) -> ImageData:
    return decode_data_uri(url, WHERE, policy or ImagePolicy())


def refused(url: str, policy: ImagePolicy | None = None) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        decode(url, policy)
    assert info.value.param == WHERE and WHERE in info.value.message
    return info.value


def chat(*parts: dict[str, Any], role: str = "user") -> list[dict[str, Any]]:
    return [{"role": role, "content": [{"type": "text", "text": "What is this?"}, *parts]}]


def image_url(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                           ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_data_uris_of_each_format_decode_to_rgb(fmt: str, mime: str) -> None:
    data = encoded(fmt, quality=95) if fmt in ("JPEG", "WEBP") else encoded(fmt)
    image = decode(uri(data, mime))
    assert (image.mime, image.width, image.height, image.image.mode) == (mime, 4, 3, "RGB")
    assert image.data == data and len(image.digest) == 64
    r, g, b = image.image.getpixel((1, 1))  # type: ignore[misc]
    assert r > 240 and g < 16 and b < 16


def test_an_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), c) for c in (RED, BLUE)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    image = decode(uri(out.getvalue(), "image/gif"))
    assert image.image.getpixel((0, 0)) == RED


def test_transparency_is_laid_over_white() -> None:
    image = decode(uri(encoded("PNG", color=(0, 0, 0, 0), mode="RGBA")))
    assert image.image.getpixel((0, 0)) == (255, 255, 255)


def test_the_declared_type_may_differ_from_the_format() -> None:
    assert decode(uri(encoded("JPEG"), "image/png")).mime == "image/jpeg"


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header is sound and whose pixel data is junk: decoding it would fail."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I",
                                                                     zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"junk") + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize(("url", "words"), [
    (uri(b"not an image at all"), "not a PNG, JPEG, WebP or GIF"),
    (uri(encoded("PNG")[:50]), "corrupt or truncated"),
    (uri(png_header(4, 3)), "corrupt or truncated"),
    (uri(encoded("BMP"), "image/png"), "not a PNG, JPEG, WebP or GIF"),
    ("data:image/png;base64,iVBOR!!w0KGgo=", "not valid base64"),
    ("data:image/png;base64,iVBORw0KGgo", "not valid base64"),
    (uri(b"hello", "text/plain"), "'text/plain' is not supported"),
    (uri(encoded("PNG"), "image/svg+xml"), "'image/svg+xml' is not supported"),
    ("data:image/png,rawbytes", "must be data:<image type>;base64"),
    ("data:image/png;base64", "must be data:<image type>;base64"),
])
def test_bad_data_uris_are_a_400_naming_the_part(url: str, words: str) -> None:
    assert words in refused(url).message


def test_the_pixel_count_is_checked_from_the_header_before_decoding() -> None:
    error = refused(uri(png_header(5000, 4000)))
    assert "5000x4000 = 20000000 pixels" in error.message and "--max-image-pixels" in error.message


def test_a_decompression_bomb_is_a_400() -> None:
    assert "too many pixels" in refused(uri(png_header(100_000, 100_000))).message


def test_the_limits_are_the_policys() -> None:
    png = encoded("PNG", size=(10, 10))
    assert "100 pixels; at most 99" in refused(uri(png), ImagePolicy(max_pixels=99)).message
    assert "larger than 20 bytes" in refused(uri(png), ImagePolicy(max_bytes=20)).message
    assert decode(uri(png), ImagePolicy(max_pixels=100, max_bytes=len(png))).width == 10


async def test_load_images_normalizes_image_parts_in_place() -> None:
    png = encoded("PNG")
    messages = chat(image_url(uri(png), detail="low"), {"type": "image_url",
                                                       "image_url": uri(encoded("GIF"))})
    loaded = await load_images(messages, ImagePolicy(), "m", VISION)
    text, first, second = loaded[0]["content"]
    assert text == {"type": "text", "text": "What is this?"}
    assert first["type"] == "image" and first["detail"] == "low" and first["image"].data == png
    assert second["detail"] == "auto" and second["image"].mime == "image/gif"
    assert images_of(loaded) == [first["image"], second["image"]]
    assert messages[0]["content"][1]["type"] == "image_url"  # the request is not changed


async def test_responses_input_images_load_with_their_paths() -> None:
    items: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "input_text", "text": "x"}]},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "see"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]
    with pytest.raises(InvalidRequestError) as info:
        await load_images(items, ImagePolicy(), "m", VISION, where="input")
    assert info.value.param == "input[1].content[1]"
    items[1]["content"][1]["image_url"] = uri(encoded("PNG"))
    loaded = await load_images(items, ImagePolicy(), "m", VISION, where="input")
    assert loaded[0] is items[0] and images_of(loaded)[0].width == 4


async def test_messages_without_images_are_returned_as_they_are() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert await load_images(messages, ImagePolicy(), "m", ("text",)) is messages


@pytest.mark.parametrize(("part", "role", "words"), [
    (image_url("data:x"), "user", "image_url part, but the model 'tiny' reads only text "
                                  "(its input modalities: text); images are not supported"),
    ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "user",
     "an input_audio part, but the model 'tiny' reads only text"),
    ({"type": "file", "file": {"file_id": "f"}}, "user", "files are not supported"),
])
async def test_a_part_the_model_cannot_read_is_a_400_naming_its_modalities(
        part: dict[str, Any], role: str, words: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await load_images(chat(part, role=role), ImagePolicy(), "tiny", ("text",))
    assert info.value.param == WHERE and words in info.value.message


@pytest.mark.parametrize(("part", "role", "words"), [
    (image_url(uri(encoded("PNG"))), "system", "read only in the content of user messages"),
    ({"type": "input_audio", "input_audio": {}}, "user", "reads only text and image"),
    ({"type": "input_image", "file_id": "file-1"}, "user", "file_id is not supported"),
    (image_url(uri(encoded("PNG")), detail="max"), "user", "detail must be one of"),
    ({"type": "image_url", "image_url": {}}, "user", "needs its url"),
    (image_url("ftp://example.com/a.png"), "user", "a data: URI or an http(s) URL"),
    (image_url("https://example.com/a.png"), "user", "does not fetch image URLs"),
])
async def test_bad_image_parts_for_a_vision_model(part: dict[str, Any], role: str,
                                                  words: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await load_images(chat(part, role=role), ImagePolicy(), "m", VISION)
    assert info.value.param == WHERE and words in info.value.message


async def test_too_many_images_is_a_400_naming_the_list() -> None:
    parts = [image_url(uri(encoded("PNG")))] * 3
    with pytest.raises(InvalidRequestError, match="holds 3 images; at most 2") as info:
        await load_images(chat(*parts), ImagePolicy(max_images=2), "m", VISION)
    assert info.value.param == "messages"
    items = [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}] * 3}]
    with pytest.raises(InvalidRequestError) as info:
        await load_images(items, ImagePolicy(max_images=2), "m", VISION, where="input")
    assert info.value.param == "input"
    assert len(images_of(await load_images(chat(*parts), ImagePolicy(max_images=2), "m", VISION,
                                           count=False))) == 3


async def test_a_stored_conversation_keeps_its_images_as_data_uris() -> None:
    loaded = await load_images(chat(image_url(uri(encoded("WEBP")), detail="high")),
                               ImagePolicy(), "m", VISION)
    stored = json.loads(json.dumps(storable(loaded)))
    assert stored[0]["content"][1]["image_url"]["detail"] == "high"
    again = await load_images(stored, ImagePolicy(), "m", VISION)
    assert images_of(again) == images_of(loaded)
    assert images_of(again)[0].digest == images_of(loaded)[0].digest


# --- URLs, from a real HTTP server on 127.0.0.1 -------------------------------------------

PNG = encoded("PNG", size=(6, 5))


class Images(BaseHTTPRequestHandler):
    """/ok.png and /slow (after a second) an image; /big an image with no length, far over
    any limit; /declared a length over any limit; /moved a redirect to /ok.png; /page HTML;
    /gone a 404; /zipped a gzipped image."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.path == "/slow":
            time.sleep(1.0)
        if self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()  # no length: HTTP/1.0 reads to the close
            for _ in range(256):
                self.wfile.write(bytes(1024))
            return
        status, kind, body, extra = {
            "/declared": (200, "image/png", b"", {"Content-Length": str(10**9)}),
            "/moved": (302, "text/plain", b"", {"Location": "/ok.png"}),
            "/page": (200, "text/html", b"<html></html>", {}),
            "/gone": (404, "text/plain", b"", {}),
            "/zipped": (200, "image/png", gzip.compress(PNG), {"Content-Encoding": "gzip"}),
        }.get(self.path, (200, "image/png", PNG, {}))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        for key, value in {"Content-Length": str(len(body)), **extra}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


class Site(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, *args: Any) -> None:
        return None  # the client hung up on /big or /slow, as it should


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[str, list[str]]]:
    """(base URL, the paths requested so far) of the server of :class:`Images`."""
    seen: list[str] = []
    server = Site(("127.0.0.1", 0), type("Handler", (Images,), {"seen": seen}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def allowing(base: str, **limits: Any) -> ImagePolicy:
    return ImagePolicy((f"{base}/*",), **limits)


async def fetch_error(url: str, policy: ImagePolicy) -> str:
    with pytest.raises(InvalidRequestError) as info:
        await load_image(url, WHERE, policy)
    assert info.value.param == WHERE
    return info.value.message


async def test_an_allowed_url_is_fetched_and_decoded(site: tuple[str, list[str]]) -> None:
    base, seen = site
    image = await load_image(f"{base}/ok.png", WHERE, allowing(base))
    assert (image.width, image.height, image.data, image.mime) == (6, 5, PNG, "image/png")
    assert seen[-1] == "/ok.png"


async def test_a_url_not_allowed_is_refused_before_any_connection(
        site: tuple[str, list[str]]) -> None:
    base, seen = site
    before = len(seen)
    others = ImagePolicy((f"{base}/public/*", "http://images.example.com/*"))
    for policy in (ImagePolicy(), others):
        messages = [{"role": "user", "content": [image_url(uri(PNG)),
                                                 image_url(f"{base}/ok.png")]}]
        with pytest.raises(InvalidRequestError) as info:
            await load_images(messages, policy, "m", VISION)
        assert info.value.param == WHERE
    with pytest.raises(InvalidRequestError, match="reads only text"):  # a model that cannot see
        await load_images(chat(image_url(f"{base}/ok.png")), allowing(base), "m", ("text",))
    assert len(seen) == before


@pytest.mark.parametrize(("path", "limits", "words"), [
    ("/big", {"max_bytes": 4096}, "larger than 4096 bytes"),
    ("/declared", {}, "larger than"),
    ("/moved", {}, "answered 302, a redirect"),
    ("/slow", {"fetch_timeout_s": 0.2}, "no answer within 0.2 s"),
    ("/page", {}, "'text/html' is not supported"),
    ("/gone", {}, "answered HTTP 404"),
    ("/zipped", {}, "answered compressed"),
])
async def test_a_url_that_does_not_give_a_bounded_image_is_a_400(
        site: tuple[str, list[str]], path: str, limits: dict[str, Any], words: str) -> None:
    base, seen = site
    assert words in await fetch_error(f"{base}{path}", allowing(base, **limits))
    assert seen[-1] == path  # a redirect is not followed
