"""Images in chat messages: found, checked, decoded and fetched at the edge, before a prompt
is built.

Both front ends hand a request's messages to :func:`load_images` (through
:func:`core.serving.handlers.prepare_chat` or :func:`core.responses.handler.start_response`)
before the shared chat handler runs. It reads a chat ``image_url`` part
(``{"image_url": {"url", "detail"}}`` or ``{"image_url": "<url>"}``) and a Responses
``input_image`` part (``{"image_url": "<url>", "detail"}``; the MCP ``chat`` tool sends its image
content as chat parts with data URIs), and replaces each with the one normalized part the
model side reads::

    {"type": "image", "image": ImageData, "detail": "auto" | "low" | "high"}

Before anything is fetched or decoded, every media part is checked against the model's input
modalities (audio and files are read by no served model), images must be in user messages, and
a request holds at most ``max_images``. A ``data:`` URI must be base64 of a PNG, JPEG, WebP or
GIF image (an animation gives its first frame); its pixel count is read from the header and
checked before the pixels are decoded. An ``http(s)://`` URL is fetched only when an
``--allow-image-urls`` pattern permits it (none does by default; :mod:`core.chat.image_urls`
says what a pattern is and how a fetch is bounded). Every refusal is a 400 whose ``param`` is
the part's path (``messages[0].content[1]``, ``input[0].content[2]``).

A stored conversation keeps its images as chat ``image_url`` parts with data URIs
(:func:`storable`); :func:`load_images` decodes them again when the conversation goes on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from PIL import Image, ImageOps

from core.chat.image_urls import allowed_url, check_type, fetch, too_big
from core.chat.url_patterns import UrlPattern
from core.errors import InvalidRequestError

# One source of truth for the limits (the command line's flags default to these).
DEFAULT_MAX_IMAGES = 8  # per request
DEFAULT_MAX_PIXELS = 4096 * 4096  # width * height of one image (16.8 M; 50 MB as RGB)
DEFAULT_MAX_BYTES = 20 << 20  # one image as sent, as OpenAI's limit per image
DEFAULT_FETCH_TIMEOUT_S = 10.0  # one URL, connecting to the last byte

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
MIME_OF = {**FORMATS, "MPO": "image/jpeg"}  # the JPEG decoder names a camera's JPEG MPO
MIME_TYPES = {*FORMATS.values(), "image/jpg", "image/pjpeg", "image/x-png"}
DETAILS = ("auto", "low", "high")
MODALITY = {"image_url": "image", "input_image": "image", "image": "image",
            "input_audio": "audio", "audio": "audio", "file": "file", "input_file": "file"}
NOT_READ = {"image": "images are", "audio": "audio is", "file": "files are"}


@dataclass(frozen=True)
class ImageData:
    """One decoded image: the bytes as sent, their type, the RGB pixels and a digest."""

    data: bytes = field(repr=False, compare=False)
    mime: str  # the decoded format's type (image/png, image/jpeg, image/webp, image/gif)
    image: Image.Image = field(repr=False, compare=False)  # RGB; an animation's first frame
    digest: str  # sha256 of data, hex

    @property
    def width(self) -> int:
        return self.image.width

    @property
    def height(self) -> int:
        return self.image.height

    def data_uri(self) -> str:
        """The image as a base64 ``data:`` URI (how a stored conversation keeps it)."""
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode()}"


@dataclass(frozen=True)
class ImagePolicy:
    """What a request's images may be: how many, how large, and which URLs are fetched
    (``allow_urls``: patterns as :mod:`core.chat.image_urls` reads them; none: no URL is
    ever fetched)."""

    allow_urls: tuple[str, ...] = ()
    max_images: int = DEFAULT_MAX_IMAGES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S
    patterns: tuple[UrlPattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """ValueError for a bad limit or pattern (the command line reports it)."""
        for name in ("max_images", "max_pixels", "max_bytes", "fetch_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        object.__setattr__(self, "patterns", tuple(UrlPattern.parse(p) for p in self.allow_urls))


@dataclass(frozen=True)
class _Part:
    """A media part found in the messages: where it is and what it asks for."""

    message: int
    index: int
    where: str  # its path, e.g. messages[0].content[1]
    kind: str  # its type
    role: Any
    part: dict[str, Any]

    @property
    def modality(self) -> str:
        return MODALITY[self.kind]


def images_of(messages: list[dict[str, Any]]) -> list[ImageData]:
    """Every loaded image of ``messages``, in order (what the model's processor reads)."""
    return [part["image"] for m in messages if isinstance(m.get("content"), list)
            for part in m["content"] if is_image_part(part)]


def is_image_part(part: Any) -> bool:
    """Whether ``part`` is a normalized (loaded) image part."""
    return isinstance(part, dict) and part.get("type") == "image" \
        and isinstance(part.get("image"), ImageData)


def image_part(image: ImageData, detail: str = "auto") -> dict[str, Any]:
    """The normalized part of a loaded image."""
    return {"type": "image", "image": image, "detail": detail}


def storable(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` as JSON: each loaded image part back to a chat part with a data URI."""
    def part(p: Any) -> Any:
        if not is_image_part(p):
            return p
        return {"type": "image_url", "image_url": {"url": p["image"].data_uri(),
                                                   "detail": p.get("detail", "auto")}}

    return [{**m, "content": [part(p) for p in m["content"]]}
            if isinstance(m.get("content"), list) else m for m in messages]


def has_media(messages: Any) -> bool:
    """Whether any message holds an image, audio or file part (loaded or not)."""
    return bool(_media_parts(messages, "messages"))


def media_error(where: str, kind: str, model_id: str, modalities: Sequence[str]
                ) -> InvalidRequestError:
    """The 400 for a media part the model cannot read (naming its input modalities), or that
    stands where media are not read (outside a user message's content)."""
    modality = MODALITY.get(kind, kind)
    if modality in modalities:
        return InvalidRequestError(f"{where}: {kind} parts are read only in the content of "
                                   "user messages", param=where)
    return InvalidRequestError(
        f"{where} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} part, but the model "
        f"{model_id!r} reads only {' and '.join(modalities)} (its input modalities: "
        f"{', '.join(modalities)}); {NOT_READ.get(modality, modality)} not supported",
        param=where, code="unsupported_parameter")


def check_modalities(messages: Any, model_id: str, modalities: Sequence[str],
                     where: str = "messages") -> None:
    """A 400 for the first media part the model cannot read or that is not in a user
    message; nothing is decoded."""
    for found in _media_parts(messages, where):
        if found.modality not in modalities or found.role != "user":
            raise media_error(found.where, found.kind, model_id, modalities)


async def load_images(messages: Any, policy: ImagePolicy, model_id: str,
                      modalities: Sequence[str], where: str = "messages",
                      count: bool = True) -> Any:
    """``messages`` (chat messages, or Responses input items with ``where="input"``) with
    every image part decoded or fetched into a normalized part; the same object when there
    is none. Checks modalities, roles and (with ``count``) the number of images first, so
    nothing is fetched for a request that would be refused."""
    if not _media_parts(messages, where):
        return messages
    check_modalities(messages, model_id, modalities, where)
    found = [f for f in _media_parts(messages, where) if f.modality == "image"]
    if count and len(found) > policy.max_images:
        raise InvalidRequestError(f"'{where}' holds {len(found)} images; at most "
                                  f"{policy.max_images} per request", param=where)
    sources = [(f, _source(f)) for f in found if f.kind != "image"]  # "image": loaded already
    for f, (url, _) in sources:  # every URL is checked before the first one is fetched
        if not url.startswith("data:"):
            allowed_url(url, f.where, policy.patterns)
    out = list(messages)
    for f, (url, detail) in sources:
        image = await load_image(url, f.where, policy)
        message = out[f.message] = {**out[f.message]}
        message["content"] = [*message["content"]]
        message["content"][f.index] = image_part(image, detail)
    return out


async def load_image(url: str, where: str, policy: ImagePolicy) -> ImageData:
    """A ``data:`` URI decoded, or an allowed ``http(s)://`` URL fetched and decoded."""
    if url.startswith("data:"):
        return await anyio.to_thread.run_sync(decode_data_uri, url, where, policy)
    return await fetch_image(url, where, policy)


def decode_data_uri(url: str, where: str, policy: ImagePolicy) -> ImageData:
    """``data:<image type>;base64,<data>`` decoded (blocks: run it in a worker thread)."""
    header, comma, payload = url.removeprefix("data:").partition(",")
    mime, *params = header.split(";")
    if not comma or "base64" not in (p.strip().lower() for p in params):
        raise InvalidRequestError(f"{where}: a data URI must be data:<image type>;base64,<data>",
                                  param=where)
    check_type(mime, where, MIME_TYPES)
    if len(payload) > (policy.max_bytes + 2) // 3 * 4:
        raise too_big(where, policy.max_bytes)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"{where}: the data URI's data is not valid base64",
                                  param=where) from None
    return decode_image(data, where, policy)


def decode_image(data: bytes, where: str, policy: ImagePolicy) -> ImageData:
    """PNG, JPEG, WebP or GIF bytes decoded to RGB, their pixel count checked from the header
    before the pixels are read (blocks: run it in a worker thread)."""
    if len(data) > policy.max_bytes:
        raise too_big(where, policy.max_bytes)
    try:
        opened = Image.open(io.BytesIO(data), formats=list(FORMATS))
    except Image.DecompressionBombError:
        raise _too_many_pixels(where, policy, None) from None
    except Exception:  # any failure to identify untrusted bytes is the client's
        raise InvalidRequestError(f"{where}: the data is not a PNG, JPEG, WebP or GIF image",
                                  param=where) from None
    with opened:
        if opened.width * opened.height > policy.max_pixels:
            raise _too_many_pixels(where, policy, opened.size)
        try:
            rgb = _rgb(opened)
        except Exception:  # truncated or corrupt data fails in many ways
            raise InvalidRequestError(f"{where}: the {opened.format} image is corrupt or "
                                      "truncated", param=where) from None
        return ImageData(data, MIME_OF[str(opened.format)], rgb,
                         hashlib.sha256(data).hexdigest())


async def fetch_image(url: str, where: str, policy: ImagePolicy) -> ImageData:
    """An allowed URL fetched (see :mod:`core.chat.image_urls`) and decoded."""
    target = allowed_url(url, where, policy.patterns)
    data = await fetch(target, where, policy.max_bytes, policy.fetch_timeout_s, MIME_TYPES)
    return await anyio.to_thread.run_sync(decode_image, data, where, policy)


def _media_parts(messages: Any, where: str) -> list[_Part]:
    """Every media part of every message's content, whatever else is malformed (the
    messages are validated after this)."""
    found = []
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind in MODALITY and (kind != "image"
                                                               or is_image_part(part)):
                found.append(_Part(i, j, f"{where}[{i}].content[{j}]", kind,
                                   message.get("role"), part))
    return found


def _source(found: _Part) -> tuple[str, str]:
    """(url, detail) of a chat ``image_url`` or Responses ``input_image`` part."""
    part, where = found.part, found.where
    image_url = part.get("image_url")
    if isinstance(image_url, dict):  # the chat form; the bare string is accepted too
        part, image_url = image_url, image_url.get("url")
    if found.kind == "input_image" and part.get("file_id") is not None:
        raise InvalidRequestError(f"{where}: file_id is not supported (this server has no "
                                  "files API); give image_url, a data: URI or an http(s) URL",
                                  param=where, code="unsupported_parameter")
    if not isinstance(image_url, str) or not image_url:
        raise InvalidRequestError(f"{where}: an image part needs its url (a data: URI or an "
                                  "http(s) URL)", param=where)
    detail = part.get("detail") or "auto"
    if detail not in DETAILS:
        raise InvalidRequestError(f"{where}: detail must be one of {', '.join(DETAILS)}",
                                  param=where)
    return image_url, detail


def _rgb(image: Image.Image) -> Image.Image:
    """The first frame upright, as RGB (transparency over white, as transformers does)."""
    image.seek(0)
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _too_many_pixels(where: str, policy: ImagePolicy, size: tuple[int, int] | None
                     ) -> InvalidRequestError:
    shape = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else "too many pixels"
    return InvalidRequestError(f"{where}: the image has {shape}; at most {policy.max_pixels} "
                               "per image (--max-image-pixels)", param=where)
