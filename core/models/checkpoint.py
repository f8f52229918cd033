"""A Hugging Face checkpoint's safetensors read tensor by tensor, under llama.cpp's names.

:class:`SafetensorsCheckpoint` answers the same calls as :class:`core.models.gguf.GGUFFile`, so
a family loads either the same way (:meth:`core.models.llama.CausalLM.load_weights`): each
projection is read, fused and converted into the served format before the next is read, and
the model is never whole in float32 on the way in (a bf16 checkpoint quantized to int4 peaks
near its int4 size, not at twice its bf16 one).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from safetensors import safe_open

from core.errors import ModelLoadError
from core.models.quant import Weight

# llama.cpp's name of a tensor -> the Hugging Face Llama family's (a family may rename some)
GLOBAL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
         "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
         "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj", "ffn_gate_inp": "mlp.gate",
         "ffn_gate_exps": "mlp.experts.{}.gate_proj", "ffn_up_exps": "mlp.experts.{}.up_proj",
         "ffn_down_exps": "mlp.experts.{}.down_proj"}
LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


class WeightSource(Protocol):
    """Where a model's tensors come from, by llama.cpp's names (``blk.0.attn_q.weight``)."""

    path: Path  # the file or directory, for errors

    @property
    def rotary_permuted(self) -> bool:
        """Whether query and key rows lie in llama.cpp's rotary order (its ``llama`` GGUFs)."""

    def has(self, name: str) -> bool: ...

    def tensor(self, name: str) -> torch.Tensor:
        """A float32 tensor of its own (no view of a file's map)."""

    def linear(self, names: Sequence[str], permute: Sequence[int | None]
               ) -> Weight:
        """The weights of ``names``, rows one after another."""

    def expert_linear(self, names: Sequence[str], expert: int) -> Weight:
        """Expert ``expert``'s slice of the expert tensors ``names`` (``ffn_up_exps``), rows
        one after another."""


def fused_biases(source: WeightSource, names: Sequence[str]) -> torch.Tensor | None:
    """The biases of the tensors ``names`` (without ``.bias``) one after another, or None when
    they have none."""
    present = [f"{name}.bias" for name in names if source.has(f"{name}.bias")]
    if not present:
        return None
    if len(present) != len(names):
        raise ModelLoadError(f"{source.path}: only some of {', '.join(names)} have a bias")
    return torch.cat([source.tensor(name) for name in present])


def hf_name(name: str, layer_names: dict[str, str] = LAYER, expert: int | None = None) -> str:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (under a family's
    ``layer_names``; an expert tensor's under its index)."""
    match = LAYER_NAME.fullmatch(name)
    if match:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{layer_names[part].format(expert)}.{kind}"
    base, _, kind = name.rpartition(".")
    return f"{GLOBAL[base]}.{kind}"


# where vision-language checkpoints keep their language model's tensors, and the usual name
TEXT_PREFIXES = (("model.text_model.", "model."), ("model.language_model.", "model."),
                 ("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."))


class SafetensorsCheckpoint:
    """The ``*.safetensors`` files of a model directory, opened lazily by safetensors."""

    rotary_permuted = False

    def __init__(self, model_dir: Path, layer_names: dict[str, str] | None = None) -> None:
        """``layer_names``: the family's names of layer tensors (default: Llama's)."""
        self.layer_names = LAYER | (layer_names or {})
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"no *.safetensors weights in {model_dir}")
        self.path = model_dir
        self._where: dict[str, Path] = {}
        self._aliases: dict[str, str] = {}  # usual name -> the checkpoint's
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    self._where[key] = file
                    self._where.setdefault(key.removeprefix("model."), file)
                    for prefix, usual in TEXT_PREFIXES:  # a vision checkpoint's language model
                        if key.startswith(prefix):
                            self._where.setdefault(usual + key.removeprefix(prefix), file)
                            self._aliases[usual + key.removeprefix(prefix)] = key

    def has(self, name: str) -> bool:
        return self._key(name) is not None

    def tensor(self, name: str, expert: int | None = None) -> torch.Tensor:
        key = self._key(name, expert)
        if key is None:
            raise ModelLoadError(f"{self.path}: the weights have no "
                                 f"{hf_name(name, self.layer_names, expert)}")
        with safe_open(str(self._where[key]), framework="pt") as f:
            return f.get_tensor(self._aliases.get(key, key)).to(  # not a view of the map
                torch.float32, copy=True)

    def linear(self, names: Sequence[str], permute: Sequence[int | None]) -> torch.Tensor:
        return torch.cat([self.tensor(name) for name in names])

    def expert_linear(self, names: Sequence[str], expert: int) -> torch.Tensor:
        return torch.cat([self.tensor(name, expert) for name in names])

    def _key(self, name: str, expert: int | None = None) -> str | None:
        try:
            key = hf_name(name, self.layer_names, expert)
        except KeyError:  # a GGUF-only tensor (rope_freqs): none in a Hugging Face checkpoint
            return None
        for candidate in (key, key.removeprefix("model.")):
            if candidate in self._where:
                return candidate
        return None
