"""Vision-language families: a checkpoint whose language model the engine runs (a family of
:mod:`core.models.families`) and whose image side runs on transformers' modules
(:class:`VisionTower`), fed by the checkpoint's own processor (:class:`ImagePrompter`).

Each family module says: its ``MODEL_TYPES``, the language model's config (``text_config``),
its tower, and where each image lies in a processed prompt (``images``); a family whose
``model_type`` may also name a text checkpoint says which configs it takes (``accepts``);
an M-RoPE family gives each prompt's positions (``rope_positions``), and a family whose
processor transformers' AutoProcessor cannot load loads it (``load_processor``).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from core.models.vision import gemma3, idefics3, qwen2_vl
from core.models.vision.tower import VisionTower

FAMILIES: tuple[ModuleType, ...] = (idefics3, gemma3, qwen2_vl)
TOWERS = {"idefics3": idefics3.Idefics3Tower, "smolvlm": idefics3.Idefics3Tower,
          "gemma3": gemma3.Gemma3Tower,
          "qwen2_vl": qwen2_vl.Qwen2VLTower, "qwen2_5_vl": qwen2_vl.Qwen2VLTower}
VISION_MODEL_TYPES = tuple(t for f in FAMILIES for t in f.MODEL_TYPES)


def family(model_type: str, hf_config: dict[str, Any] | None = None) -> ModuleType | None:
    """The vision family of a ``config.json``'s ``model_type`` (None: a text model). Given
    the whole ``hf_config``, a family may find it is no vision checkpoint (a ``gemma3``
    config without a ``vision_config``)."""
    found = next((f for f in FAMILIES if model_type in f.MODEL_TYPES), None)
    accepts = getattr(found, "accepts", None)
    if hf_config is not None and accepts is not None and not accepts(hf_config):
        return None
    return found


def text_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The language model's config of a vision checkpoint (any other: itself)."""
    found = family(hf_config.get("model_type", ""), hf_config)
    return hf_config if found is None else dict(found.text_config(hf_config))


def load_tower(model_dir: Path, model_type: str) -> VisionTower:
    return TOWERS[model_type](model_dir, model_type)


__all__ = ["VISION_MODEL_TYPES", "VisionTower", "family", "load_tower", "text_config"]
