"""Which models a server serves: from the command line or a ``models.toml`` file.

A config file is a list of ``[[models]]`` tables (see ``examples/models.toml``)::

    [[models]]
    id = "smollm2"               # optional; default: the model's usual name
    kind = "chat"                # chat | embedding
    path = "default"             # a directory, a .gguf (chat) or "default" (the bundled one)
    aliases = ["small"]          # more names the `model` field may use
    dtype = "auto"               # auto | float32 | bfloat16
    max_seq_len = 2048           # context length, >= 16 (an encoder's own limit caps it)
    max_seqs = 16                # chat: running batch size
    kv_cache_tokens = 8192       # chat: KV cache size in tokens
    kv_cache_dtype = "auto"      # chat: auto | float32 | float16 (auto: float16 where the
                                 # weights are int8, int5 or int4 on the CPU; else the dtype)
    max_batched_tokens = 512     # chat: new tokens per step (longer prompts prefill in chunks)
    prefix_caching = true        # chat: reuse the cache of shared prompt prefixes
    isq = "auto"                 # chat: weight format at load (auto = a GGUF's own, else f16
                                 # on x86 CPUs; int8, int5, int4, bf16, none = float32)
    enforce_eager = false        # chat: run decode steps eagerly, without recorded graphs
    seed = 0                     # chat: seed for requests that send none
    max_queue = 256              # chat: sequences that may wait beyond max_seqs (then 429)
    request_timeout = 600        # chat: seconds a request may wait and run (then 504)
    default = true               # the model "default" names for its kind (else the first)

Relative paths are relative to the file. Keys the file leaves out take the command line's values.
:class:`ModelSpec` is the one definition of these keys, their types and limits: the command line
builds the same type from its flags, and both report a bad value with :func:`spec_error`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.errors import ModelLoadError
from core.models import loader
from core.models.formats import ALIASES, KvCacheDtype

ModelKind = Literal["chat", "embedding"]
Dtype = Literal["auto", "float32", "bfloat16"]
KINDS: tuple[ModelKind, ...] = get_args(ModelKind)
DTYPES: tuple[Dtype, ...] = get_args(Dtype)
DEFAULT_MAX_QUEUE = 256
MIN_SEQ_LEN = 16

Name = Annotated[str, Field(min_length=1)]
Count = Annotated[int, Field(ge=1)]


class ModelSpec(BaseModel):
    """One model to serve: what it is, where its files are, how it is named and sized.

    Strict: a value of the wrong type is refused rather than coerced (``max_seqs = "4"``,
    ``prefix_caching = 1``), and so is an unknown key.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    kind: ModelKind = "chat"
    path: Name | None = None  # None: the bundled default of this kind
    id: Name | None = None
    aliases: tuple[Name, ...] = ()
    dtype: Dtype = "auto"
    max_seq_len: Annotated[int, Field(ge=MIN_SEQ_LEN)] | None = None
    max_seqs: Count = 16
    kv_cache_tokens: Count | None = None
    kv_cache_dtype: KvCacheDtype = "auto"
    max_batched_tokens: Count = 512
    prefix_caching: bool = True
    isq: str = "auto"
    enforce_eager: bool = False
    seed: int | None = None
    max_queue: Annotated[int, Field(ge=0)] = DEFAULT_MAX_QUEUE
    request_timeout: Annotated[float, Field(gt=0)] | None = None
    default: bool = False

    @field_validator("aliases", mode="before")
    @classmethod
    def _aliases_list(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise ValueError(f"must be a list of names, not {value!r}")
        return tuple(value)

    @field_validator("isq")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value.strip().lower() not in ALIASES:
            raise ValueError(f"{value!r} is not a quantization type; choose one of "
                             f"{', '.join(ALIASES)}")
        return value

    @property
    def served_id(self) -> str:
        return self.id or loader.usual_id(self.path, self.kind)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.served_id, *self.aliases)

    def but(self, **changes: Any) -> ModelSpec:
        """This spec with ``changes``, validated like the rest."""
        return ModelSpec.model_validate({**self.model_dump(), **changes})


def spec_error(exc: ValidationError, name: Any = str) -> ModelLoadError:
    """One line for the first bad value: ``{name(key)} {what is wrong}, not {value!r}``.

    ``name`` turns a key into what the user wrote: ``models.toml: models[0]: max_seqs`` for a
    file, ``--max-seqs`` on the command line."""
    error = exc.errors(include_url=False)[0]
    key = str(error["loc"][0]) if error["loc"] else "spec"
    if error["type"] == "extra_forbidden":
        known = ", ".join(ModelSpec.model_fields)
        return ModelLoadError(f"{name(key)} is not a known key; known: {known}")
    if error["type"] == "value_error":  # our validators' messages name the value
        return ModelLoadError(f"{name(key)}: {str(error['msg']).removeprefix('Value error, ')}")
    message = str(error["msg"])
    return ModelLoadError(f"{name(key)}: {message[:1].lower()}{message[1:]}, not "
                          f"{error['input']!r}")


def load_config(path: Path, base: ModelSpec | None = None) -> list[ModelSpec]:
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
    specs = [_spec(table, base or ModelSpec(), path.parent, f"{path}: models[{i}]")
             for i, table in enumerate(tables)]
    check_specs(specs)
    return specs


def _spec(table: Any, base: ModelSpec, root: Path, where: str) -> ModelSpec:
    if not isinstance(table, dict):
        raise ModelLoadError(f"{where} is not a table")
    values = dict(table)
    raw_path = values.get("path")
    if raw_path == "default":
        values["path"] = None
    elif isinstance(raw_path, str) and raw_path:
        values["path"] = str((root / Path(raw_path).expanduser()).resolve())
    values.setdefault("kind", "chat")
    if values["kind"] == "embedding":  # the command line's chat length is no cap for encoders
        values.setdefault("max_seq_len", None)
    try:
        return base.but(**values)
    except ValidationError as exc:
        raise spec_error(exc, lambda key: f"{where}: {key}") from None


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
