"""Owns the model weights and the paged KV cache; turns a scheduled batch into logits."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from torch import nn
from torch.ao.nn.quantized.modules.linear import LinearPackedParams

from core.engine import allocator
from core.engine.block_manager import BlockManager
from core.engine.decode_graph import DecodeGraphs
from core.engine.image_inputs import StepImages
from core.engine.scheduler import ScheduledBatch
from core.engine.sequence import Sequence
from core.errors import InvalidRequestError, ModelLoadError
from core.models import formats, kernels, pages, quant, vision
from core.models.attention import AttentionMetadata, ChunkContext
from core.models.checkpoint import SafetensorsCheckpoint
from core.models.decoder import CausalLM
from core.models.dtypes import resolve_dtype
from core.models.families import read_config
from core.models.gguf import GGUFFile
from core.models.layers import can_pack_linears, held_tensors, pack_linears, use_own_kernels
from core.models.quant import Weight

log = logging.getLogger(__name__)

RELEASE_BYTES = 32 << 20  # weights built between two trims of the heap while loading
INTEGER_FORMATS = ("int4", "int5", "int8")  # weights in 8 bits or fewer: a float16 KV cache

class ModelRunner:
    """Loads a checkpoint directory of a supported family (:mod:`core.models.families`) and
    runs prefill/decode steps on it."""

    def __init__(self, model_dir: Path, dtype: str = "auto", kv_cache_tokens: int = 32768,
                 block_size: int = 16, num_threads: int | None = None,
                 weights_from: ModelRunner | None = None, quantization: str = "none",
                 decode_graphs: bool = True, gguf: Path | None = None,
                 kv_cache_dtype: str = "auto", max_seq_len: int | None = None) -> None:
        """``model_dir`` holds ``config.json`` and, unless ``gguf`` names the file whose tensors
        are read as they are, safetensors weights. ``quantization`` ``auto`` is a GGUF's own
        format (see :meth:`GGUFFile.native_format`), else f16 on x86 CPUs. ``kv_cache_dtype``
        ``auto`` is float16 where the weights start in 8 bits or fewer on our CPU kernels (the
        keys and values rounded far finer than the weights: half the memory and the reads of
        float32, as llama.cpp keeps its cache), else the model's dtype; it stays through
        :meth:`quantize`. ``max_seq_len``: the longest sequence the engine runs (none is
        longer than the KV cache either): the rotary tables cover its positions, not the
        config's context (Gemma 3's 32768 positions of two tables took 134 MB)."""
        if num_threads:  # otherwise torch's default (physical cores, or OMP_NUM_THREADS)
            torch.set_num_threads(num_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            allocator.keep_freed_memory()
        self.dtype = resolve_dtype(dtype)
        hf_config = json.loads((model_dir / "config.json").read_text())
        self.family, self.config = read_config(hf_config)
        # a vision-language checkpoint's image side, or None
        self.vision_type = hf_config.get("model_type") \
            if vision.family(hf_config.get("model_type", ""), hf_config) else None
        self.model_dir = model_dir
        self.gguf = gguf
        # what auto means for a GGUF: its own format (read once, not at every /re_isq)
        self.native_format = GGUFFile(gguf).native_format() if gguf is not None else None
        # decided once, for this model and each re-quantization of it: the kernels build (or
        # load) now, while the model loads, not in its first request
        self.own_kernels = self.device.type == "cpu" and kernels.available()
        self.quantization = self._format(quantization)
        if kv_cache_dtype not in formats.KV_CACHE_DTYPES:  # what the attention kernels take
            raise ModelLoadError(f"unknown KV cache dtype {kv_cache_dtype!r}; choose "
                                 f"{', '.join(formats.KV_CACHE_DTYPES)}")
        half = self.own_kernels and self.dtype == torch.float32 \
            and self.quantization in INTEGER_FORMATS
        self.kv_dtype = resolve_dtype(kv_cache_dtype) if kv_cache_dtype != "auto" \
            else torch.float16 if half else self.dtype
        # recorded decode steps (core.engine.decode_graph): on the CPU, where Python's per-op work
        # is as slow as the arithmetic
        self.decode_graphs = decode_graphs and self.device.type == "cpu" \
            and self.family.model.recordable
        self.block_size = block_size
        self.num_blocks = max(2, kv_cache_tokens // block_size + 1)
        self.max_positions = min(self.num_blocks * block_size,
                                 max_seq_len or self.num_blocks * block_size)
        self.model: CausalLM
        self.graphs: DecodeGraphs | None = None
        if (weights_from is not None and weights_from.dtype == self.dtype
                and weights_from.quantization == self.quantization):
            model = share_weights(weights_from.model)  # same checkpoint: no second copy
            model.cover_positions(self.max_positions)
            self._use(model)
        else:
            self._use(self._load(model_dir))
        self._allocate_cache()

    def _format(self, name: str) -> str:
        kind = formats.resolve(name)
        if kind == "auto" and self.native_format is not None and self.device.type == "cpu":
            kind = self.native_format
        if kind == "int5" and not self.own_kernels:  # 5-bit weights run on our kernel alone
            kind = "int8"
        return quant.for_device(kind, self.device)

    def _load(self, model_dir: Path) -> CausalLM:
        """Each tensor from the file straight into its layer's format: in the file's own
        format every tensor a GGUF holds in blocks runs as it is held (4-bit or 8-bit); any
        other tensor, or format, passes through float32 one tensor at a time."""
        source = GGUFFile(self.gguf) if self.gguf \
            else SafetensorsCheckpoint(model_dir, self.family.hf_names)
        kind, own = self.quantization, self.own_kernels
        if self.device.type != "cpu":
            kind = "none"

        unreleased = [0]  # bytes of weights built since the heap was last trimmed

        def linear(weight: Weight, bias: torch.Tensor | None, is_head: bool) -> nn.Module:
            # in the file's own format every tensor in blocks runs as the file holds it (a
            # Q4_K_M file's Q6_K ones on the 6-bit kernel); a head kept so runs as it is
            # (llama.cpp computes the same), one that would have to be re-quantized keeps
            # OUTPUT_LAYER_KIND's precision
            as_filed = kind != "none" and kind == self.native_format
            kept = quant.keeps_blocks(weight, kind, own, as_filed)
            layer_kind = quant.OUTPUT_LAYER_KIND.get(kind, kind) if is_head and not kept \
                else kind
            layer = quant.build_linear(weight, bias, layer_kind, own, self.dtype, as_filed)
            # the float32 copies just freed go back now, not at the end: with the raised trim
            # threshold they stayed in the heap, between the layers built after them. Once
            # every RELEASE_BYTES: a trim walks the whole heap, and a mixture of experts
            # builds thousands of small layers (a 1B-class one spent 8 s trimming)
            unreleased[0] += quant.weight_bytes(layer)
            if unreleased[0] >= RELEASE_BYTES:
                allocator.release_free_memory()
                unreleased[0] = 0
            return layer

        with torch.device("meta"):  # no position lies beyond the longest sequence
            model = self.family.model(self.config, self.max_positions)
        try:
            model.load_weights(source, linear, self.dtype)
        finally:  # a reserve made for this load (core.models.pages): what it did not give
            pages.release()  # goes back
        del source  # the layers hold copies of their own: nothing of the file is kept
        model = model.to(device=self.device).eval().requires_grad_(False)
        if kind == "none" and can_pack_linears(self.dtype, self.device):
            pack_linears(model)
        use_own_kernels(model, own and self.dtype == torch.float32)
        if self.vision_type is not None:
            model.vision = vision.load_tower(model_dir, self.vision_type).to(self.device)
        allocator.release_free_memory()
        return model

    def quantize(self, kind: str) -> None:
        """Reload the checkpoint's weights in the quantization ``kind``
        (see :mod:`core.models.quant`) and swap them in; the KV cache, and the sequences in it,
        stay."""
        kind = self._format(kind)
        if kind != "none" and self.device.type != "cpu":
            raise InvalidRequestError("quantization runs on the CPU only", param="ggml_type")
        previous, self.quantization = self.quantization, kind
        try:
            model = self._load(self.model_dir)
        except BaseException:
            self.quantization = previous
            raise
        model.attach_kv_cache(self.kv_cache)
        self._use(model)

    def _use(self, model: CausalLM) -> None:
        self.model = model
        # an image's tokens attend to each other both ways in prefill (Gemma 3)
        self.bidirectional_images = model.vision is not None and model.vision.bidirectional_images
        self.graphs = DecodeGraphs(model) if self.decode_graphs else None

    @property
    def weight_bytes(self) -> int:
        return quant.weight_bytes(self.model)

    def _allocate_cache(self) -> None:
        cfg = self.config
        # keys and values of a slot side by side: one scatter and one gather per layer and step
        shape = (cfg.num_layers, self.num_blocks * self.block_size, 2 * cfg.num_kv_heads,
                 cfg.head_dim)
        self.kv_cache = torch.empty(shape, dtype=self.kv_dtype, device=self.device)
        self.kv_cache[:, :self.block_size].zero_()  # block 0: zeroed target of padded reads
        self.model.attach_kv_cache(self.kv_cache)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, blocks: BlockManager) -> torch.Tensor:
        """Compute the batch's new tokens into the cache; returns (num_sampling, vocab) float32
        logits of the last token of each sequence in ``batch.sampling``."""
        ids, positions, meta, last, images = self._prepare(batch, blocks)
        if images.spans:
            hidden = self._forward_images(ids, positions, meta, images)
        else:
            hidden = self._forward(ids, positions, meta)
        if not last:
            return torch.empty(0, self.config.vocab_size)
        return self.model.logits(hidden[self._tensor(last)]).cpu()

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
                 ) -> torch.Tensor:
        """(num_tokens, hidden) final hidden states: decode-only steps by their recorded graph
        where the model has one, every other step eagerly."""
        if self.graphs is not None and self.graphs.applies(meta):
            try:
                return self.graphs(ids, positions, meta)
            except RuntimeError as exc:  # not recordable: a bug to report, not a reason to stop
                log.warning("decode graphs disabled for this model, running eagerly: %s", exc)
                self.graphs = None
        out: torch.Tensor = self.model(ids, positions, meta)
        return out

    def _forward_images(self, ids: torch.Tensor, positions: torch.Tensor,
                        meta: AttentionMetadata, images: StepImages) -> torch.Tensor:
        """A step whose chunks hold images: their placeholders' embeddings are the vision
        tower's (computed now for the images that have none yet)."""
        if self.model.vision is None:
            raise InvalidRequestError("this model does not read images")
        embeds = images.embeddings(self.model.vision, self.dtype, self.device)
        try:
            out: torch.Tensor = self.model(ids, positions, meta, embeds)
        finally:
            images.release()
        return out

    def _prepare(self, batch: ScheduledBatch, blocks: BlockManager
                 ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int],
                            StepImages]:
        """Lay the batch's new tokens end to end: multi-token chunks first, then one-token
        rows, which attend through a padded gather of their cached context."""
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        last: list[int] = []
        chunks: list[ChunkContext] = []
        rows: list[tuple[Sequence, int]] = []  # one-token rows and their context length
        images = StepImages()
        rope: list[tuple[int, torch.Tensor]] = []  # M-RoPE: (step index, (3, n) positions)
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            start, stop = seq.num_cached_tokens, seq.num_cached_tokens + num_new
            if seq.images:
                images.add(seq, start, stop, len(ids))
            if seq.rope_positions is not None and start < seq.num_prompt_tokens:
                stop_p = min(stop, seq.num_prompt_tokens)
                rope.append((len(ids), seq.rope_positions[:, start:stop_p].long()))
            ids += seq.token_ids[start:stop]
            positions += range(start + seq.rope_delta, stop + seq.rope_delta)
            slots += blocks.slots(seq, start, stop)
            if stop == len(seq):
                last.append(len(ids) - 1)
            if num_new > 1:
                chunks.append(self._chunk_context(seq, start, stop, blocks))
            else:
                rows.append((seq, stop))
        meta = AttentionMetadata(self._tensor(slots), chunks)
        if rows:
            meta.gather_index, meta.attn_mask = self._decode_context(rows, blocks)
        flat = self._tensor(positions)
        if rope:  # every token's three positions: equal where the prompt has no image
            spatial = flat.expand(3, -1).clone()
            for first, part in rope:  # prompt tokens; later ones are at index + delta
                spatial[:, first:first + part.shape[1]] = part
            flat = spatial
        return self._tensor(ids), flat, meta, last, images

    def _chunk_context(self, seq: Sequence, start: int, stop: int, blocks: BlockManager
                       ) -> ChunkContext:
        images = [(max(i.offset, start), i.end) for i in seq.images
                  if i.offset < stop and i.end > start] if self.bidirectional_images else []
        if start == 0 and not images:  # the chunk is all of its context: plain causal attention
            return ChunkContext(stop)
        # the last key each query reads: its own, or the last of its image's (a chunk never
        # splits an image; one resuming inside an image reads its start from the cache)
        horizon = torch.arange(start, stop)
        for first, end in images:
            horizon[first - start:end - start] = end - 1
        mask = torch.arange(stop).unsqueeze(0) <= horizon.unsqueeze(1)  # (num_new, stop)
        slots = self._seq_slots(seq, stop, blocks).to(self.device) if start else None
        return ChunkContext(stop - start, slots, mask.to(self.device))

    def _decode_context(self, rows: list[tuple[Sequence, int]], blocks: BlockManager
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
        lengths = [n for _, n in rows]
        max_len = max(lengths)
        gather = torch.zeros(len(rows), max_len, dtype=torch.long)  # slot 0 = null block
        for row, (seq, n) in enumerate(rows):
            gather[row, :n] = self._seq_slots(seq, n, blocks)
        if min(lengths) == max_len:  # no padding: attend everywhere, no mask
            return gather.flatten().to(self.device), None
        mask = torch.arange(max_len) < torch.tensor(lengths).unsqueeze(1)  # True = attend
        return gather.flatten().to(self.device), mask[:, None, None, :].to(self.device)

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
        if isinstance(module, LinearPackedParams):  # fbgemm-packed weights: no tensors to share
            memo[id(module)] = module
            continue
        for tensor in held_tensors(module):
            memo[id(tensor)] = tensor
    return copy.deepcopy(model, memo)
