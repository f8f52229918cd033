"""Which models a server serves: from the command line or a ``models.toml`` file.

A config file is a list of ``[[models]]`` tables (see ``examples/models.toml``)::

    [[models]]
    id = "smollm2"               # optional; default: the model's usual name
    kind = "chat"                # chat | embedding
    path = "default"             # a directory, a .gguf (chat) or "default" (the bundled one)
    aliases = ["small"]          # more names the `model` field may use
    dtype = "auto"               # auto | float32 | bfloat16
    max_seq_len = 2048           # context length (an encoder's own limit caps it)
    max_seqs = 16                # chat: running batch size
    kv_cache_tokens = 8192       # chat: KV cache size in tokens
    max_batched_tokens = 512     # chat: new tokens per step (longer prompts prefill in chunks)
    prefix_caching = true        # chat: reuse the cache of shared prompt prefixes
    isq = "auto"                 # chat: weight format at load (auto = f16 on x86 CPUs, int8,
                                 # int4, bf16, none = float32)
    enforce_eager = false        # chat: run decode steps eagerly, without recorded graphs
    seed = 0                     # chat: seed for requests that send none
    max_queue = 256              # chat: sequences that may wait beyond max_seqs (then 429)
    request_timeout = 600        # chat: seconds a request may wait and run (then 504)
    default = true               # the model "default" names for its kind (else the first)

Relative paths are relative to the file. Keys the file leaves out take the command line's values.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from core.errors import ModelLoadError
from core.models import loader, quant

KINDS = ("chat", "embedding")
DEFAULT_MAX_QUEUE = 256
DTYPES = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: what it is, where its files are, how it is named and sized."""

    kind: str = "chat"
    path: str | None = None  # None: the bundled default of this kind
    id: str | None = None
    aliases: tuple[str, ...] = ()
    dtype: str = "auto"
    max_seq_len: int | None = None
    max_seqs: int = 16
    kv_cache_tokens: int | None = None
    max_batched_tokens: int = 512
    prefix_caching: bool = True
    isq: str = "auto"
    enforce_eager: bool = False
    seed: int | None = None
    max_queue: int = DEFAULT_MAX_QUEUE
    request_timeout: float | None = None
    default: bool = False

    @property
    def served_id(self) -> str:
        return self.id or loader.usual_id(self.path, self.kind)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.served_id, *self.aliases)


def load_config(path: Path, base: ModelSpec = ModelSpec()) -> list[ModelSpec]:
    """Parse a models.toml; each entry starts from ``base`` (the command line's settings)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelLoadError(f"cannot read the config file {path}: {exc}") from exc
    unknown = set(data) - {"models"}
    if unknown:
        raise ModelLoadError(f"{path}: unknown top-level keys {sorted(unknown)}; expected "
                             "[[models]] tables")
    tables = data.get("models")
    if not isinstance(tables, list) or not tables:
        raise ModelLoadError(f"{path}: no [[models]] tables")
    specs = [_spec(table, base, path.parent, f"{path}: models[{i}]")
             for i, table in enumerate(tables)]
    check_specs(specs)
    return specs


def _spec(table: Any, base: ModelSpec, root: Path, where: str) -> ModelSpec:
    if not isinstance(table, dict):
        raise ModelLoadError(f"{where} is not a table")
    known = {f.name for f in fields(ModelSpec)}
    unknown = set(table) - known
    if unknown:
        raise ModelLoadError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        values[key] = _check_value(key, value, where)
    raw_path = values.get("path")
    if raw_path in (None, "default"):
        values["path"] = None
    else:
        values["path"] = str((root / Path(raw_path).expanduser()).resolve())
    values.setdefault("kind", "chat")
    if values["kind"] == "embedding":  # the command line's chat length is no cap for encoders
        values.setdefault("max_seq_len", None)
    return replace(base, **values)


def _check_value(key: str, value: Any, where: str) -> Any:
    def fail(expected: str) -> ModelLoadError:
        return ModelLoadError(f"{where}: {key} must be {expected}, not {value!r}")

    if key in ("id", "path"):
        if not isinstance(value, str) or not value:
            raise fail("a non-empty string")
    elif key == "isq":
        if not isinstance(value, str) or value.strip().lower() not in quant.ALIASES:
            raise fail(f"one of {', '.join(quant.ALIASES)}")
    elif key == "kind" and value not in KINDS:
        raise fail(" or ".join(repr(k) for k in KINDS))
    elif key == "dtype" and value not in DTYPES:
        raise fail(", ".join(repr(d) for d in DTYPES))
    elif key == "aliases":
        if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
            raise fail("a list of non-empty strings")
        return tuple(value)
    elif key in ("max_seq_len", "max_seqs", "kv_cache_tokens", "max_batched_tokens"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail("a positive integer")
    elif key == "max_queue":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail("an integer >= 0")
    elif key == "request_timeout":
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise fail("a positive number of seconds")
        return float(value)
    elif key == "seed" and (isinstance(value, bool) or not isinstance(value, int)):
        raise fail("an integer")
    elif key in ("default", "prefix_caching", "enforce_eager") and not isinstance(value, bool):
        raise fail("true or false")
    return value


def check_specs(specs: list[ModelSpec]) -> None:
    """Names are unique (ids and aliases together), at most one default per kind."""
    seen: dict[str, str] = {}
    for spec in specs:
        for name in spec.names:
            if name == "default":
                raise ModelLoadError("'default' is reserved; it cannot be a model id or alias")
            if name in seen:
                raise ModelLoadError(f"the model name {name!r} is used twice ({seen[name]} and "
                                     f"{spec.served_id})")
            seen[name] = spec.served_id
    for kind in KINDS:
        defaults = [s.served_id for s in specs if s.kind == kind and s.default]
        if len(defaults) > 1:
            raise ModelLoadError(f"more than one default {kind} model: {', '.join(defaults)}")
    if not specs:
        raise ModelLoadError("no model to serve")
