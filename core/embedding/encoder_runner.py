"""Owns an encoder's weights (a Hugging Face ``AutoModel``) and turns a batch of token-id lists
into sentence vectors: one padded forward pass, pooling, optional L2 normalization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.embedding.pooling import PoolingConfig
from core.errors import ModelLoadError
from core.models.dtypes import resolve_dtype


class EncoderRunner:
    """Loads an encoder directory and encodes right-padded batches on one device."""

    def __init__(self, model_dir: Path, pooling: PoolingConfig, dtype: str = "auto",
                 pad_token_id: int = 0) -> None:
        from transformers import AutoModel

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = resolve_dtype(dtype)
        self.pooling = pooling
        self.pad_token_id = pad_token_id
        try:
            model = AutoModel.from_pretrained(str(model_dir / pooling.transformer_dir),
                                              dtype=self.dtype)
        except Exception as exc:  # transformers raises many kinds for a broken directory
            raise ModelLoadError(f"cannot load the encoder in {model_dir}: {exc}") from exc
        self.model = model.to(self.device).eval()
        self.hidden_size = int(model.config.hidden_size)
        self.max_position_embeddings = int(getattr(model.config, "max_position_embeddings",
                                                   0) or 1 << 30)

    @property
    def dim(self) -> int:
        """Length of the vectors this encoder returns (one hidden size per pooling mode)."""
        return self.hidden_size * len(self.pooling.modes)

    @torch.inference_mode()
    def encode(self, batch: list[list[int]]) -> np.ndarray:
        """Token-id lists (specials included) -> (len(batch), dim) float32 sentence vectors."""
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
        vectors = pool(hidden, mask, self.pooling.modes)
        if self.pooling.normalize:
            vectors = F.normalize(vectors, p=2, dim=1)
        return vectors.float().cpu().numpy()


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: tuple[str, ...]) -> torch.Tensor:
    """(B, T, H) token states and a (B, T) 0/1 mask of right-padded rows -> (B, H * len(modes)),
    the modes concatenated, computed as sentence-transformers' ``Pooling`` computes them."""
    acc = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    lengths = torch.clamp(mask.sum(dim=1, keepdim=True).to(acc), min=1e-9)  # (B, 1)
    outs = []
    for mode in modes:
        if mode == "cls":
            outs.append(hidden[:, 0])
        elif mode == "max":
            outs.append(hidden.masked_fill(m == 0, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (hidden * m).sum(dim=1, dtype=acc)
            denominator = lengths if mode == "mean" else lengths.sqrt()
            outs.append((total / denominator).to(hidden.dtype))
        elif mode == "weightedmean":
            positions = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=acc)
            weights = m.to(acc) * positions.view(1, -1, 1)  # (B, T, 1): 1, 2, ... then 0s
            total = (hidden * weights).sum(dim=1)
            outs.append((total / torch.clamp(weights.sum(dim=1), min=1e-9)).to(hidden.dtype))
        elif mode == "lasttoken":
            last = (mask.sum(dim=1) - 1).clamp(min=0)  # (B,)
            outs.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return torch.cat(outs, dim=-1)
