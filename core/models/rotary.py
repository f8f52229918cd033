"""Rotary position embedding: the frequencies of each scaling scheme checkpoints use, and the
cos/sin tables the attention layers rotate queries and keys by (by one position a token, or
by three in Qwen2-VL's multimodal rotary)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# what the rope_scaling (rope_parameters) of a config.json may name; llama.cpp's files say
# none, linear or yarn, or bake llama3 scaling into a rope_freqs tensor
ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "yarn", "longrope")


@dataclass(frozen=True)
class RopeScaling:
    """How a checkpoint stretches its rotary frequencies past its training context.

    - ``default``: none; ``dynamic`` (NTK) too within the model's context, which is all that
      the KV cache holds here (transformers rescales only past it);
    - ``linear``: every frequency divided by ``factor`` (positions interpolated);
    - ``llama3`` (Llama 3.1-3.3): frequencies whose wavelength exceeds the original context
      over ``low_freq_factor`` divided by ``factor``, those under it over ``high_freq_factor``
      kept, and the band between blended smoothly;
    - ``yarn`` (Qwen, DeepSeek): interpolated and extrapolated frequencies ramped between the
      dimensions that turn ``beta_fast`` and ``beta_slow`` times over the original context,
      cos and sin scaled by an attention factor;
    - ``longrope`` (Phi-3/3.5/4-mini): each frequency divided by its own ``short_factor``
      within the original context and by its ``long_factor`` past it (transformers switches
      the whole sequence once it is longer; here each position keeps its own), cos and sin
      scaled by an attention factor;
    - a GGUF's ``rope_freqs`` tensor (llama.cpp bakes llama3 scaling into it): each frequency
      divided by its own factor (``freq_factors``).

    ``mrope_section`` (Qwen2-VL, Qwen2.5-VL: ``default`` frequencies, which their configs
    before transformers 5 call ``mrope``): a token has three positions (time, height, width);
    the first ``mrope_section[0]`` frequencies rotate by the first, the next
    ``mrope_section[1]`` by the second, the rest by the third.
    """

    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_positions: int = 8192
    freq_factors: tuple[float, ...] = ()
    long_factors: tuple[float, ...] = ()  # longrope: freq_factors are its short ones
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    given_attention_factor: float | None = None  # a config's own attention_factor
    truncate: bool = True  # yarn: the ramp's ends rounded to whole dimensions
    mrope_section: tuple[int, ...] = ()  # M-RoPE: frequencies a position component (t, h, w)

    def inv_freq(self, dim: int, theta: float, long: bool = False) -> torch.Tensor:
        """(dim / 2,) float64 inverse frequencies; ``long``: longrope's past the original
        context."""
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        if self.kind == "longrope":
            factors = self.long_factors if long else self.freq_factors
            return inv_freq / torch.tensor(factors, dtype=torch.float64)
        if self.freq_factors:
            return inv_freq / torch.tensor(self.freq_factors, dtype=torch.float64)
        if self.kind == "linear":
            return inv_freq / self.factor
        if self.kind == "llama3":
            return self._llama3(inv_freq)
        if self.kind == "yarn":
            return self._yarn(inv_freq, dim, theta)
        return inv_freq

    def _llama3(self, inv_freq: torch.Tensor) -> torch.Tensor:
        wavelen = 2 * math.pi / inv_freq
        low_wavelen = self.original_max_positions / self.low_freq_factor
        high_wavelen = self.original_max_positions / self.high_freq_factor
        scaled = torch.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
        smooth = (self.original_max_positions / wavelen - self.low_freq_factor) \
            / (self.high_freq_factor - self.low_freq_factor)
        blended = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, blended, scaled)

    def _yarn(self, inv_freq: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
        def turns_at(rotations: float) -> float:  # the dimension that turns so many times
            return dim * math.log(self.original_max_positions / (rotations * 2 * math.pi)) \
                / (2 * math.log(theta))

        low, high = turns_at(self.beta_fast), turns_at(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low)
                / (high - low if high != low else 0.001)).clamp(0, 1)
        return inv_freq / self.factor * ramp + inv_freq * (1 - ramp)

    @property
    def attention_factor(self) -> float:
        """What cos and sin are multiplied by (yarn's and longrope's magnitude correction)."""
        if self.given_attention_factor is not None:
            return self.given_attention_factor
        if self.kind == "yarn":
            def mscale(scale: float, m: float = 1.0) -> float:
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

            if self.mscale and self.mscale_all_dim:
                return mscale(self.factor, self.mscale) / mscale(self.factor, self.mscale_all_dim)
            return mscale(self.factor)
        if self.kind == "longrope" and self.factor > 1.0:
            return math.sqrt(1 + math.log(self.factor) / math.log(self.original_max_positions))
        return 1.0

    @classmethod
    def from_hf(cls, rope: dict[str, Any], max_positions: int) -> RopeScaling:
        """From a config's ``rope_parameters`` (or ``rope_scaling``) and its context length."""
        kind = str(rope.get("rope_type", rope.get("type", "default")))
        kind = "default" if kind == "mrope" else kind  # transformers 4's name (sections)
        original = int(rope.get("original_max_position_embeddings") or max_positions)
        factor = rope.get("factor")
        if factor is None and kind == "longrope":
            factor = max_positions / original
        attention = rope.get("attention_factor")
        return cls(kind, factor=float(factor or 1.0),
                   low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
                   high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
                   original_max_positions=original,
                   freq_factors=tuple(rope.get("short_factor") or ()),
                   long_factors=tuple(rope.get("long_factor") or ()),
                   beta_fast=float(rope.get("beta_fast") or 32.0),
                   beta_slow=float(rope.get("beta_slow") or 1.0),
                   mscale=float(rope.get("mscale") or 0.0),
                   mscale_all_dim=float(rope.get("mscale_all_dim") or 0.0),
                   given_attention_factor=None if attention is None else float(attention),
                   truncate=bool(rope.get("truncate", True)),
                   mrope_section=tuple(int(n) for n in rope.get("mrope_section") or ()))


class Rotary(nn.Module):
    """Rotary position embedding in the rotate-half layout Hugging Face checkpoints use, over
    the first ``dim`` dimensions of each head (all of them but in Phi-4-mini's partial rotary).

    rotate_half(x) = cat(-x2, x1) is computed as roll(x, half) times a sine table whose first
    half is negated: two multiplies and a roll per step for queries and keys together.

    With an M-RoPE section, (3, num_tokens) positions pick each dimension's cos/sin at the
    position component its section names (``section``); (num_tokens,) positions stand for
    three equal components, which is plain rotary: decode steps read the tables as always.
    """

    def __init__(self, dim: int, max_positions: int, theta: float,
                 scaling: RopeScaling | None = None) -> None:
        super().__init__()
        self.dim, self.max_positions = dim, max_positions
        self.theta, self.scaling = theta, scaling or RopeScaling()
        self.cos: torch.Tensor
        self.sin: torch.Tensor  # first half negated
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)
        self.section: torch.Tensor  # M-RoPE: (1, 1, dim) the position component of each dim
        self.register_buffer("section", self._section(), persistent=False)
        self.build()

    def _section(self) -> torch.Tensor:
        counts = self.scaling.mrope_section
        if not counts:
            return torch.empty(0, dtype=torch.long)
        if sum(counts) != self.dim // 2 or len(counts) != 3:
            raise ValueError(f"an M-RoPE section {counts} must be three counts that sum to "
                             f"half the rotary dim ({self.dim // 2})")
        half = torch.repeat_interleave(torch.arange(3), torch.tensor(counts))
        return torch.cat([half, half]).view(1, 1, self.dim)

    def build(self) -> None:
        """Compute the cos/sin tables."""
        t = torch.arange(self.max_positions, dtype=torch.float64).unsqueeze(1)
        freqs = t * self.scaling.inv_freq(self.dim, self.theta)  # (max_pos, dim/2)
        if self.scaling.kind == "longrope":
            beyond = t >= self.scaling.original_max_positions
            freqs = torch.where(beyond, t * self.scaling.inv_freq(self.dim, self.theta, True),
                                freqs)
        magnitude = self.scaling.attention_factor
        self.cos = (torch.cat([freqs, freqs], -1).cos() * magnitude).float().to(self.cos.device)
        self.sin = (torch.cat([-freqs, freqs], -1).sin() * magnitude).float().to(self.sin.device)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(num_tokens,) positions, or (3, num_tokens) with an M-RoPE section -> cos, sin of
        shape (num_tokens, 1, dim)."""
        if positions.dim() == 1:
            return (self.cos[positions].unsqueeze(1).to(dtype),
                    self.sin[positions].unsqueeze(1).to(dtype))
        if not self.section.numel():
            raise ValueError("three positions a token need a model with M-RoPE")
        index = self.section.expand(1, positions.shape[1], self.dim)
        # (3, num_tokens, dim) tables at each component, each dim taken from its own
        return (self.cos[positions].gather(0, index).transpose(0, 1).to(dtype),
                self.sin[positions].gather(0, index).transpose(0, 1).to(dtype))

    def covering(self, max_positions: int) -> Rotary:
        """The same rotation over ``max_positions`` positions, on this one's device."""
        return Rotary(self.dim, max_positions, self.theta, self.scaling).to(self.cos.device)


def apply_rope(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate (num_tokens, heads, dim) ``x`` by the precomputed cos/sin (into ``out``,
    which may be ``x`` itself: the products are taken before it is written)."""
    cos, sin = rope
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin, out=out)
