"""What every family's model is: token embedding, decoder layers over the paged KV cache, a
final norm and an LM head, loaded tensor by tensor under llama.cpp's names from a GGUF file or
a safetensors checkpoint. A family (``core/models/<family>.py``) gives its decoder layer: which
norms wrap attention and the MLP, and how its tensors load."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from core.models.attention import Attention, AttentionMetadata, Rope
from core.models.blocks import FileBlocks, form
from core.models.checkpoint import SafetensorsCheckpoint, WeightSource, fused_biases
from core.models.config import ModelConfig
from core.models.layers import MLP, RMSNorm
from core.models.quant import (
    Int4Blocks,
    Int4Embedding,
    Int4Linear,
    Int8BlockLinear,
    Int8Blocks,
    Int8Embedding,
    MixedBlocks,
    Weight,
)
from core.models.rotary import Rotary
from core.models.vision.tower import VisionTower

# builds a projection from its weights and bias; True for the LM head
LinearBuilder = Callable[[Weight, torch.Tensor | None, bool], nn.Module]


def attention(cfg: ModelConfig, index: int) -> Attention:
    """Layer ``index``'s attention as the config describes it, its q/k norms included."""
    layer = Attention(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                      qkv_bias=cfg.attention_bias, o_bias=cfg.o_proj_bias, qk_norm=cfg.qk_norm,
                      rotary_dim=cfg.rotary_dim or None, scale=cfg.attn_scale or None,
                      softcap=cfg.attn_softcap or None,
                      window=cfg.sliding_windows[index] if cfg.sliding_windows else None)
    if cfg.qk_norm == "head":
        layer.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        layer.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
    elif cfg.qk_norm == "full":
        layer.q_norm = RMSNorm(layer.q_size, cfg.rms_norm_eps)
        layer.k_norm = RMSNorm(layer.kv_size, cfg.rms_norm_eps)
    return layer


def mlp(cfg: ModelConfig) -> MLP:
    return MLP(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias, act=cfg.hidden_act)


@dataclass
class Loader:
    """Reads a model's tensors into its layers: each projection built by ``linear`` in the
    served format before the next is read. ``norm_shift`` is added to every norm weight
    (Gemma's checkpoints hold w for a scale of 1 + w; llama.cpp's files hold 1 + w)."""

    file: WeightSource
    linear: LinearBuilder
    dtype: torch.dtype
    permuted: tuple[int | None, int | None, int | None]  # heads whose q/k rows are permuted
    norm_shift: float = 0.0

    def projection(self, names: Sequence[str], permute: Sequence[int | None] | None = None,
                   is_head: bool = False, expert: int | None = None) -> nn.Module:
        """The fused projection of the tensors ``names`` (without ``.weight``)."""
        files = [f"{n}.weight" for n in names]
        weight = self.file.linear(files, permute or [None] * len(names)) if expert is None \
            else self.file.expert_linear(files, expert)
        bias = fused_biases(self.file, names) if expert is None else None
        return self.linear(weight, bias, is_head)

    def attention(self, attn: Attention, b: str, qkv: Sequence[str] = ("attn_q", "attn_k",
                                                                       "attn_v")) -> None:
        """q/k/v (one fused tensor, or three), the output projection and the q/k norms."""
        attn.qkv_proj = self.projection([b + n for n in qkv],
                                        self.permuted if len(qkv) == 3 else None)
        attn.o_proj = self.projection([f"{b}attn_output"])
        if attn.q_norm is not None and attn.k_norm is not None:
            self.norm(attn.q_norm, f"{b}attn_q_norm")
            self.norm(attn.k_norm, f"{b}attn_k_norm")

    def mlp(self, layer: MLP, b: str, gate_up: Sequence[str] = ("ffn_gate", "ffn_up"),
            expert: int | None = None) -> None:
        layer.gate_up_proj = self.projection([b + n for n in gate_up], expert=expert)
        layer.down_proj = self.projection([b + ("ffn_down_exps" if expert is not None
                                                else "ffn_down")], expert=expert)

    def norm(self, norm: RMSNorm, name: str) -> None:
        norm.weight = self.param(self.file.tensor(f"{name}.weight") + self.norm_shift)

    def param(self, tensor: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(tensor.to(self.dtype), requires_grad=False)


class DecoderLayer(nn.Module):
    """One block of a family: ``self_attn`` over the cache, and how its norms, attention and
    MLP compose (``forward``) and load (``load``)."""

    self_attn: Attention

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor, rope: Rope, meta: AttentionMetadata) -> torch.Tensor:
        raise NotImplementedError

    def load(self, loader: Loader, b: str) -> None:
        """Take this layer's tensors, named ``b`` + llama.cpp's name (``blk.3.``)."""
        raise NotImplementedError


class CausalLM(nn.Module):
    """Embedding, decoder layers, final norm and LM head. A family subclasses it with its
    ``layer`` class (and the few numbers its config turns: see :class:`ModelConfig`)."""

    layer: type[DecoderLayer]
    # a checkpoint's norm weights are w for a scale of 1 + w (Gemma's; not in llama.cpp's files)
    hf_norm_shift = 0.0
    # a decode step can be recorded as a graph (core.engine.decode_graph): no data-dependent
    # control flow in its forward (a mixture of experts has some)
    recordable = True

    def __init__(self, cfg: ModelConfig, max_positions: int | None = None) -> None:
        """``max_positions``: how many positions the rotary tables cover (default: the
        config's context length; a 1B model's 131072 take 64 MB)."""
        super().__init__()
        self.cfg = cfg
        # given its (meta) weight: no random init, whose meta kernel imports torch's compiler
        self.embed_tokens: nn.Module = nn.Embedding(
            cfg.vocab_size, cfg.hidden_size, _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(self.layer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        positions = min(cfg.max_position_embeddings, max_positions or cfg.max_position_embeddings)
        dim = cfg.rotary_dim or cfg.head_dim
        with torch.device("cpu"):  # not in checkpoints: computed here, even on a meta model
            self.rope = Rotary(dim, positions, cfg.rope_theta, cfg.rope_scaling)
            # Gemma 3's sliding layers rotate by a base of their own, unscaled
            self.local_rope = Rotary(dim, positions, cfg.local_rope_theta) \
                if cfg.local_rope_theta else None
        self.lm_head: nn.Module = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.vision: VisionTower | None = None  # a vision-language checkpoint's image side

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata,
                embeds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(num_tokens,) ids and positions ((3, num_tokens) for M-RoPE) -> (num_tokens, hidden)
        final hidden states. ``embeds``: (rows, (rows, hidden) embeddings) that replace those
        rows' token embeddings (images' placeholders; unscaled, as the image side made them)."""
        x = self.embed_tokens(input_ids)
        if self.cfg.embed_scale != 1.0:
            x = x * self.cfg.embed_scale
        if embeds is not None:
            x = x.index_copy(0, embeds[0], embeds[1])
        meta.positions = positions
        rope = self.rope(positions, x.dtype)
        local = rope if self.local_rope is None else self.local_rope(positions, x.dtype)
        for layer in self.layers:
            assert isinstance(layer, DecoderLayer)
            x = layer(x, local if layer.self_attn.window else rope, meta)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(num_seqs, hidden) -> (num_seqs, vocab) float32 logits."""
        logits = self.lm_head(hidden).float()
        if self.cfg.logits_scale != 1.0:
            logits = logits * self.cfg.logits_scale
        if self.cfg.final_softcap:
            logits = torch.tanh(logits / self.cfg.final_softcap) * self.cfg.final_softcap
        return logits

    def cover_positions(self, positions: int) -> None:
        """Make the rotary tables cover ``positions`` (within the config's context length):
        a model that shares another's weights may run longer sequences."""
        wanted = min(self.cfg.max_position_embeddings, positions)
        if self.rope.max_positions < wanted:
            self.rope = self.rope.covering(wanted)
            if self.local_rope is not None:
                self.local_rope = self.local_rope.covering(wanted)

    def attach_kv_cache(self, kv_cache: torch.Tensor) -> None:
        """Give each layer its slice of the (layers, slots, 2 * kv_heads, head_dim) cache."""
        for i, layer in enumerate(self.layers):
            assert isinstance(layer, DecoderLayer)
            layer.self_attn.kv_cache = kv_cache[i]

    def load_weights(self, file: WeightSource, linear: LinearBuilder, dtype: torch.dtype
                     ) -> None:
        """Take the weights from a GGUF file or a safetensors checkpoint (by llama.cpp's names),
        tensor by tensor: ``linear`` builds each projection, q/k/v and gate/up fused, in the
        served format before the next is read."""
        permuted = (self.cfg.num_heads, self.cfg.num_kv_heads, None) \
            if file.rotary_permuted else (None, None, None)
        loader = Loader(file, linear, dtype, permuted,
                        self.hf_norm_shift if isinstance(file, SafetensorsCheckpoint) else 0.0)
        for i, layer in enumerate(self.layers):
            assert isinstance(layer, DecoderLayer)
            layer.load(loader, f"blk.{i}.")
        loader.norm(self.norm, "output_norm")
        if file.has("rope_freqs.weight"):  # a GGUF's llama3 scaling, baked a factor a frequency
            factors = tuple(file.tensor("rope_freqs.weight").double().tolist())
            with torch.device(self.rope.cos.device):
                self.rope = Rotary(self.rope.dim, self.rope.max_positions, self.cfg.rope_theta,
                                   replace(self.rope.scaling, freq_factors=factors))
        self._load_embedding(loader)

    def _load_embedding(self, loader: Loader) -> None:
        file, dtype = loader.file, loader.dtype
        embedding = file.linear(["token_embd.weight"], [None])
        tied = self.cfg.tie_word_embeddings or not file.has("output.weight")
        self.lm_head = loader.linear(embedding if tied else file.linear(["output.weight"], [None]),
                                     None, True)
        # a table in blocks stays in them: a lookup dequantizes its rows to the same floats;
        # tied to a head on a kernel, it reads the head's blocks
        if tied and isinstance(self.lm_head, Int4Linear) and self.lm_head.codes is not None:
            self.embed_tokens = Int4Embedding(self.lm_head, dtype)
            return
        assert not isinstance(embedding, MixedBlocks)  # one tensor: one form
        if not isinstance(embedding, torch.Tensor) and form(embedding) is Int8Blocks \
                and tied and isinstance(self.lm_head, Int8BlockLinear):
            self.embed_tokens = Int8Embedding(self.lm_head, dtype)
            return
        if isinstance(embedding, FileBlocks):
            embedding = embedding.decoded()
        if isinstance(embedding, Int4Blocks):
            self.embed_tokens = Int4Embedding(embedding, dtype)
        elif isinstance(embedding, Int8Blocks):
            self.embed_tokens = Int8Embedding(embedding, dtype)
        else:
            self.embed_tokens = nn.Embedding.from_pretrained(embedding.to(dtype), freeze=True)
