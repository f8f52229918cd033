"""A served embedding model: its tokenizer, encoder and batching worker, loaded end to end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from core.embedding.batcher import EmbeddingBatcher
from core.embedding.pooling import PoolingConfig
from core.errors import ModelLoadError
from core.models import loader
from core.models.tokenizer import Tokenizer
from core.serving.specs import ModelKind, ModelSpec


@dataclass
class EmbeddingModel:
    """One loaded encoder: ``batcher.encode(rows)`` turns token-id rows into vectors."""

    id: str
    tokenizer: Tokenizer
    batcher: EmbeddingBatcher
    dim: int
    max_model_len: int
    dtype: str
    pooling: PoolingConfig
    aliases: tuple[str, ...] = ()
    created: int = field(default_factory=lambda: int(time.time()))
    kind: ModelKind = "embedding"

    def card(self) -> dict[str, Any]:
        """What both front ends say about this model (OpenAI model object plus our details)."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "infermcp",
                "root": self.id, "max_model_len": self.max_model_len, "dtype": self.dtype,
                "kind": "embedding", "capabilities": ["embeddings"], "aliases": list(self.aliases),
                "dimensions": self.dim, "pooling": list(self.pooling.modes),
                "normalized": self.pooling.normalize}

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, report) of the batching worker: alive, batches run, inputs waiting."""
        stats = self.batcher.stats()
        return stats.is_alive, {
            "status": "ok" if stats.is_alive else "error", "kind": "embedding",
            "encoder": {"batches": stats.num_batches, "encoded": stats.num_encoded,
                        "waiting": stats.num_waiting, "max_batch_rows": stats.max_batch_rows,
                        "error": stats.error}}

    def shutdown(self) -> None:
        self.batcher.shutdown()


def load_embedding_model(spec: ModelSpec) -> EmbeddingModel:
    """Load an encoder directory (or the bundled default) and start its batching worker."""
    from core.embedding.encoder_runner import EncoderRunner  # torch stays out of light imports

    source = loader.resolve_encoder(spec.path, spec.served_id)
    pooling = PoolingConfig.from_model_dir(source.model_dir)
    tokenizer = Tokenizer.load(source.model_dir / pooling.transformer_dir)
    pad = tokenizer.pad_token_id
    runner = EncoderRunner(source.model_dir, pooling, spec.dtype,
                           pad_token_id=0 if pad is None else pad)
    limits = [runner.max_position_embeddings, pooling.max_seq_length, spec.max_seq_len]
    max_len = min(n for n in limits if n)
    if max_len <= tokenizer.num_special_tokens:
        raise ModelLoadError(f"{source.model_dir}: a context of {max_len} tokens is too short")
    batcher = EmbeddingBatcher(runner.encode)
    batcher.start()
    dtype = str(runner.dtype).removeprefix("torch.")
    return EmbeddingModel(source.served_id, tokenizer, batcher, runner.dim, max_len, dtype,
                          pooling, spec.aliases)
