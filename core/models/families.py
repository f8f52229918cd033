"""The model families this server runs, by the ``model_type`` of a Hugging Face config and by
the architecture of a llama.cpp GGUF: each family's config reader, model class and tensor names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.errors import ModelLoadError
from core.models import gemma, gguf_config, granite, llama, olmo2, phi3, qwen3_moe, vision
from core.models.config import ModelConfig
from core.models.decoder import CausalLM


@dataclass(frozen=True)
class Family:
    model_types: tuple[str, ...]
    config: Callable[[dict[str, Any]], ModelConfig]
    model: type[CausalLM]
    hf_names: dict[str, str] = field(default_factory=dict)  # llama.cpp name -> the family's


FAMILIES = (
    Family(llama.MODEL_TYPES, llama.config, llama.Llama),
    Family(gemma.MODEL_TYPES, gemma.config, gemma.Gemma, gemma.HF_NAMES),
    Family(phi3.MODEL_TYPES, phi3.config, phi3.Phi3, phi3.HF_NAMES),
    Family(granite.MODEL_TYPES, granite.config, granite.Granite),
    Family(olmo2.MODEL_TYPES, olmo2.config, olmo2.Olmo2, olmo2.HF_NAMES),
    Family(qwen3_moe.MODEL_TYPES, qwen3_moe.config, qwen3_moe.Qwen3Moe),
)
SUPPORTED_MODEL_TYPES = tuple(t for f in FAMILIES for t in f.model_types)
# llama.cpp's architectures whose files load (and the model_type each stands for)
GGUF_ARCHITECTURES = {arch: spec.model_type for arch, spec in gguf_config.ARCHITECTURES.items()}


def family_of(model_type: str) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ModelLoadError(f"unsupported model_type {model_type!r}; supported: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES + vision.VISION_MODEL_TYPES)}")


def read_config(hf_config: dict[str, Any]) -> tuple[Family, ModelConfig]:
    """A ``config.json``'s family and its numbers (a vision checkpoint's: its language
    model's); an unsupported one is a load error."""
    text = vision.text_config(hf_config)
    family = family_of(text.get("model_type", ""))
    return family, family.config(text)
