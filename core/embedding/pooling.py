"""How an encoder directory turns token states into one sentence vector, read as
sentence-transformers reads it.

A sentence-transformers directory lists its modules in ``modules.json``: a ``Transformer``
(whose folder may hold ``sentence_bert_config.json`` with ``max_seq_length``), a ``Pooling``
(its ``config.json`` names the modes) and optionally ``Normalize``. A plain Hugging Face encoder
directory has none of these; sentence-transformers then mean-pools without normalizing, and so
do we. Plain Python: the tensor side lives in :mod:`core.embedding.encoder_runner`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ModelLoadError

# The order sentence-transformers concatenates several modes in.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass(frozen=True)
class PoolingConfig:
    """Pooling modes (concatenated in this order), whether to L2-normalize, and the length
    limit the checkpoint was trained with (``None``: the encoder's own position limit)."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = None
    transformer_dir: str = ""

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> PoolingConfig:
        """Read ``modules.json`` and the module configs; defaults for a plain HF directory."""
        modules_file = model_dir / "modules.json"
        if not modules_file.is_file():
            return cls(max_seq_length=_max_seq_length(model_dir))
        modes: tuple[str, ...] = ("mean",)
        normalize, transformer_dir = False, ""
        for module in _read_json(modules_file):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            path = str(module.get("path", ""))
            if kind == "Transformer":
                transformer_dir = path
            elif kind == "Pooling":
                modes = pooling_modes(_read_json(model_dir / path / "config.json"))
            elif kind == "Normalize":
                normalize = True
            else:
                raise ModelLoadError(f"{model_dir}: the sentence-transformers module {kind!r} "
                                     "is not supported (Transformer, Pooling, Normalize are)")
        return cls(modes, normalize, _max_seq_length(model_dir / transformer_dir),
                   transformer_dir)


def pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """The modes of a ``1_Pooling/config.json``: ``pooling_mode`` (new) or the legacy booleans."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = (raw,) if isinstance(raw, str) else tuple(raw)
    else:
        modes = tuple(mode for key, mode in _LEGACY_KEYS.items() if config.get(key))
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ModelLoadError(f"unknown pooling mode {mode!r}; known: "
                                 f"{', '.join(POOLING_MODES)}")
    return modes or ("mean",)


def _max_seq_length(transformer_dir: Path) -> int | None:
    path = transformer_dir / "sentence_bert_config.json"
    if not path.is_file():
        return None
    value = _read_json(path).get("max_seq_length")
    return int(value) if value else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
