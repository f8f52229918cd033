"""Shared fixtures for the core tests: a tiny random-weight Llama checkpoint and engines on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from core.engine.async_engine import AsyncEngine
from core.engine.llm_engine import EngineConfig, LLMEngine
from core.engine.output_processor import OutputProcessor
from tests.core.tiny_model import CharTokenizer, EngineFactory, load_runner, tiny_llama_config


@pytest.fixture(scope="session")
def hf_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(hf_llama: LlamaForCausalLM, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    hf_llama.save_pretrained(path)
    return path


@pytest.fixture
def make_engine(tiny_model_dir: Path) -> EngineFactory:
    """``make_engine(kv_cache_tokens=..., **EngineConfig fields)`` -> a fresh tiny-model engine."""

    def make(kv_cache_tokens: int = 1024, **config: int) -> LLMEngine:
        return LLMEngine(load_runner(tiny_model_dir, kv_cache_tokens), EngineConfig(**config))

    return make


@pytest.fixture
def async_engine(make_engine: EngineFactory) -> Iterator[AsyncEngine]:
    """A started engine thread: 4 sequences of at most 64 tokens, a character tokenizer."""
    llm = make_engine(max_seqs=4, max_seq_len=64)
    engine = AsyncEngine(llm, OutputProcessor(llm, CharTokenizer()))
    engine.start()
    yield engine
    engine.shutdown()
