"""Gemma 3 with vision on the engine equals transformers: logits of the first token and greedy
tokens, for one image, two images in one prompt, batched requests, chunked prefill and a
repeated image read from the prefix cache up to the middle of the image; an image's tokens
attend to each other both ways (causal attention alone differs from transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from core.errors import ModelLoadError
from core.models import vision
from core.models.families import read_config
from core.models.tokenizer import Tokenizer
from tests.core.models.vision import tiny_gemma3
from tests.core.models.vision.reference import (
    LOGIT_ATOL,
    check_two_images_batched_and_chunked,
    engine,
    generate,
    picture,
    repeat_an_image,
    transformers_reference,
)

TOKENS = 16
BLOCK = 16  # the engine's block size (reference.engine)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gemma3.write(tmp_path_factory.mktemp("gemma3"))


def test_one_image_matches_transformers(model_dir: Path) -> None:
    llm, prompter, tokenizer = engine(model_dir)
    image = picture(100, 70, seed=1)  # resized to 64 x 64: 16 placeholders
    [(seq, logits)] = generate(llm, prompter, tokenizer, [("What is this?", [image])], TOKENS)
    tokens, reference = transformers_reference(model_dir, tokenizer, "What is this?", [image],
                                               TOKENS)
    assert [i.length for i in seq.images] == [tiny_gemma3.TOKENS_PER_IMAGE]
    torch.testing.assert_close(logits, reference, atol=LOGIT_ATOL, rtol=0)
    assert seq.output_token_ids == tokens


def test_image_tokens_attend_both_ways(model_dir: Path) -> None:
    """Causal attention alone over the image equals transformers without token_type_ids,
    and is far from transformers with them."""
    llm, prompter, tokenizer = engine(model_dir)
    llm.runner.bidirectional_images = False
    image = picture(64, 64, seed=6)
    [(_, logits)] = generate(llm, prompter, tokenizer, [("What is this?", [image])], 1)
    _, causal = transformers_reference(model_dir, tokenizer, "What is this?", [image], 1,
                                       bidirectional=False)
    _, both_ways = transformers_reference(model_dir, tokenizer, "What is this?", [image], 1)
    torch.testing.assert_close(logits, causal, atol=LOGIT_ATOL, rtol=0)
    assert (logits - both_ways).abs().max() > 100 * LOGIT_ATOL


def test_two_images_batched_and_chunked(model_dir: Path) -> None:
    check_two_images_batched_and_chunked(model_dir, chunk=24, tokens=TOKENS)


def test_a_repeated_image_is_read_from_the_prefix_cache(model_dir: Path) -> None:
    again, _, logits, other_logits = repeat_an_image(model_dir, TOKENS, BLOCK)
    # the cache ends inside the image: the rest of it attends to the part read from the cache
    [span] = again.images
    assert span.offset < again.num_prefix_cached_tokens < span.end
    tokenizer = Tokenizer.load(model_dir)
    tokens, reference = transformers_reference(model_dir, tokenizer, "Describe it.",
                                               [picture(64, 64, seed=4)], TOKENS)
    torch.testing.assert_close(logits, reference, atol=LOGIT_ATOL, rtol=0)
    assert again.output_token_ids == tokens
    assert (other_logits - logits).abs().max() > 100 * LOGIT_ATOL  # and reads the other image


def sparse_config(**top: Any) -> dict[str, Any]:
    """A Gemma 3 4B config.json's shape: its text_config gives little but its sizes."""
    return {"model_type": "gemma3", "eos_token_id": [1, 106], "image_token_index": 262144,
            "text_config": {"model_type": "gemma3_text", "hidden_size": 2560,
                            "intermediate_size": 10240, "num_hidden_layers": 34,
                            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                            "sliding_window": 1024}} | top


def test_the_language_model_takes_gemma3_text_defaults() -> None:
    family, cfg = read_config(sparse_config(vision_config={"model_type": "siglip_vision_model"}))
    assert cfg.model_type == "gemma3_text" and "gemma3_text" in family.model_types
    assert (cfg.vocab_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (262208, 8, 4, 256)
    assert len(cfg.sliding_windows) == 34  # five sliding layers, then a global one
    assert cfg.sliding_windows[:12] == ((1024,) * 5 + (0,)) * 2
    assert cfg.rope_theta == 1e6 and cfg.local_rope_theta == 10000.0
    assert cfg.rope_scaling.kind == "linear" and cfg.eos_token_ids == (1, 106)
    assert cfg.tie_word_embeddings


def test_a_gemma3_config_without_vision_is_no_vision_checkpoint() -> None:
    text_only = sparse_config()
    assert vision.family("gemma3", text_only) is None
    assert vision.family("gemma3") is not None  # by name alone: the vision family
    with pytest.raises(ModelLoadError, match="unsupported model_type 'gemma3'"):
        read_config(text_only)  # as before the vision family: not a text family's type
