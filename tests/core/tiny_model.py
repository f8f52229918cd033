"""Builders for the core tests: a tiny random-weight Llama config, a runner on it, a tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import LlamaConfig

from core.engine.llm_engine import LLMEngine
from core.engine.model_runner import ModelRunner

VOCAB_SIZE = 128
EOS_TOKEN_ID = 2

# make_engine(kv_cache_tokens=..., **EngineConfig fields) -> LLMEngine
EngineFactory = Callable[..., LLMEngine]


def tiny_llama_config(**overrides: object) -> LlamaConfig:
    """A 2-layer GQA Llama; a wide init spreads the logits so greedy picks are clear-cut."""
    fields: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=EOS_TOKEN_ID, initializer_range=0.2)
    return LlamaConfig(**(fields | overrides))


def load_runner(model_dir: Path, kv_cache_tokens: int = 1024, block_size: int = 4,
                quantization: str = "none", decode_graphs: bool = True,
                kv_cache_dtype: str = "auto") -> ModelRunner:
    return ModelRunner(model_dir, "float32", kv_cache_tokens=kv_cache_tokens,
                       block_size=block_size, num_threads=1, quantization=quantization,
                       decode_graphs=decode_graphs, kv_cache_dtype=kv_cache_dtype)


class CharTokenizer:
    """One distinct character per token id, so text maps back to ids exactly."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(0x100 + i) for i in token_ids)

    def encode(self, text: str) -> list[int]:
        return [ord(c) - 0x100 for c in text]
