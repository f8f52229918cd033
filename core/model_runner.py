"""Owns the model weights and the paged KV cache; turns a scheduled batch into logits."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from core.block_manager import BlockManager
from core.errors import ModelLoadError
from core.model import AttentionMetadata, CausalLM, ModelConfig, can_pack_linears, pack_linears
from core.scheduler import ScheduledBatch
from core.sequence import Sequence

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """``auto`` is float32 on the CPU (bf16 is emulated there and loses when batched)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]


class ModelRunner:
    """Loads a Llama-family checkpoint directory and runs prefill/decode steps on it."""

    def __init__(self, model_dir: Path, dtype: str = "auto", kv_cache_tokens: int = 32768,
                 block_size: int = 16, num_threads: int | None = None,
                 weights_from: ModelRunner | None = None) -> None:
        if num_threads:  # otherwise torch's default (physical cores, or OMP_NUM_THREADS)
            torch.set_num_threads(num_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = resolve_dtype(dtype)
        hf_config = json.loads((model_dir / "config.json").read_text())
        self.config = ModelConfig.from_hf(hf_config)
        self.model: CausalLM
        if weights_from is not None and weights_from.dtype == self.dtype:
            self.model = share_weights(weights_from.model)  # same checkpoint: no second copy
        else:
            self.model = self._load(model_dir)
        self.block_size = block_size
        self.num_blocks = max(2, kv_cache_tokens // block_size + 1)
        self._allocate_cache()

    def _load(self, model_dir: Path) -> CausalLM:
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"no *.safetensors weights in {model_dir}")
        weights: dict[str, torch.Tensor] = {}
        for f in files:
            weights.update(load_file(f))
        with torch.device("meta"):
            model = CausalLM(self.config)
        model = model.to_empty(device="cpu")
        model.rope.build()  # rope tables are not in checkpoints
        model.load_hf_weights(weights)
        model = model.to(device=self.device, dtype=self.dtype).eval()
        if can_pack_linears(self.dtype, self.device):
            pack_linears(model)
        return model

    def _allocate_cache(self) -> None:
        cfg = self.config
        shape = (cfg.num_layers, self.num_blocks * self.block_size, cfg.num_kv_heads, cfg.head_dim)
        self.k_cache = torch.empty(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.empty(shape, dtype=self.dtype, device=self.device)
        null = slice(0, self.block_size)  # block 0: zeroed target of padded reads
        self.k_cache[:, null].zero_()
        self.v_cache[:, null].zero_()
        self.model.attach_kv_cache(self.k_cache, self.v_cache)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, blocks: BlockManager) -> torch.Tensor:
        """Run one step; returns (num_seqs, vocab) float32 logits of each sequence's last token."""
        if batch.is_prefill:
            ids, positions, meta, last = self._prepare_prefill(batch.seqs, blocks)
        else:
            ids, positions, meta = self._prepare_decode(batch.seqs, blocks)
            last = None
        hidden = self.model(ids, positions, meta)
        if last is not None:
            hidden = hidden[last]
        for seq in batch.seqs:
            seq.num_cached_tokens = len(seq)
        return self.model.logits(hidden).cpu()

    def _prepare_prefill(self, seqs: list[Sequence], blocks: BlockManager
                         ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        lens: list[int] = []
        for seq in seqs:
            start = seq.num_cached_tokens
            if start:
                raise RuntimeError("prefill over a partly cached sequence is not supported")
            ids += seq.token_ids
            positions += range(len(seq))
            slots += [blocks.slot(seq, p) for p in range(len(seq))]
            lens.append(len(seq))
        last = torch.tensor(lens).cumsum(0) - 1
        meta = AttentionMetadata(True, self._tensor(slots), lens)
        return self._tensor(ids), self._tensor(positions), meta, last.to(self.device)

    def _prepare_decode(self, seqs: list[Sequence], blocks: BlockManager
                        ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        max_len = max(len(s) for s in seqs)
        gather = torch.zeros(len(seqs), max_len, dtype=torch.long)  # slot 0 = null block
        mask = torch.zeros(len(seqs), 1, 1, max_len, dtype=torch.bool)
        slots = []
        for row, seq in enumerate(seqs):
            n = len(seq)
            gather[row, :n] = self._seq_slots(seq, n, blocks)
            mask[row, 0, 0, :n] = True
            slots.append(blocks.slot(seq, n - 1))
        ids = self._tensor([s.token_ids[-1] for s in seqs])
        positions = self._tensor([len(s) - 1 for s in seqs])
        meta = AttentionMetadata(False, self._tensor(slots), [], gather.to(self.device),
                                 mask.to(self.device))
        return ids, positions, meta

    def _seq_slots(self, seq: Sequence, n: int, blocks: BlockManager) -> torch.Tensor:
        bs = blocks.block_size
        table = torch.tensor(seq.block_table[: blocks.blocks_needed(n)], dtype=torch.long)
        slots = (table.unsqueeze(1) * bs + torch.arange(bs)).flatten()
        return slots[:n]

    def _tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)


def share_weights(model: CausalLM) -> CausalLM:
    """A second module tree over the same weight tensors (each tree attaches its own KV cache)."""
    memo: dict[int, object] = {}
    for module in model.modules():
        tensors = [*module._parameters.values(), *module._buffers.values(),
                   *(v for v in vars(module).values() if isinstance(v, torch.Tensor))]
        for tensor in tensors:
            if tensor is not None:
                memo[id(tensor)] = tensor
    return copy.deepcopy(model, memo)
