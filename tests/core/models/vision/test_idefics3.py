"""Idefics3 and SmolVLM on the engine equal transformers: logits of the first token and greedy
tokens, for one image, two images in one prompt, batched requests, chunked prefill and a
repeated image read from the prefix cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.core.models.vision import tiny_idefics3
from tests.core.models.vision.reference import (
    LOGIT_ATOL,
    engine,
    generate,
    picture,
    transformers_reference,
)

TOKENS = 16


@pytest.fixture(scope="module", params=tiny_idefics3.MODEL_TYPES)
def model_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tiny_idefics3.write(tmp_path_factory.mktemp(request.param), model_type=request.param)


def test_one_image_matches_transformers(model_dir: Path) -> None:
    llm, prompter, tokenizer = engine(model_dir)
    image = picture(100, 70, seed=1)  # 2 x 1 tiles and the whole: 3 runs of 4 placeholders
    [(seq, logits)] = generate(llm, prompter, tokenizer, [("What is this?", [image])], TOKENS)
    tokens, reference = transformers_reference(model_dir, tokenizer, "What is this?", [image],
                                               TOKENS)
    torch.testing.assert_close(logits, reference, atol=LOGIT_ATOL, rtol=0)
    assert seq.output_token_ids == tokens


def test_two_images_batched_and_chunked(model_dir: Path) -> None:
    llm, prompter, tokenizer = engine(model_dir, chunk=32)  # chunks stop before each image
    small, wide = picture(40, 40, seed=2), picture(130, 60, seed=3)
    requests = [("Compare them.", [small, wide]), ("And this?", [wide]), ("Text only.", [])]
    results = generate(llm, prompter, tokenizer, requests, TOKENS)
    for (question, pictures), (seq, logits) in zip(requests, results, strict=True):
        tokens, reference = transformers_reference(model_dir, tokenizer, question, pictures,
                                                   TOKENS)
        torch.testing.assert_close(logits, reference, atol=LOGIT_ATOL, rtol=0)
        assert seq.output_token_ids == tokens


def test_a_repeated_image_is_read_from_the_prefix_cache(model_dir: Path) -> None:
    llm, prompter, tokenizer = engine(model_dir)
    image, other = picture(64, 64, seed=4), picture(64, 64, seed=5)
    [(first, _)] = generate(llm, prompter, tokenizer, [("Describe it.", [image])], 4)
    [(again, _)] = generate(llm, prompter, tokenizer, [("Describe it.", [image])], 4)
    [(changed, _)] = generate(llm, prompter, tokenizer, [("Describe it.", [other])], 4)
    assert first.num_prefix_cached_tokens == 0
    # every full block of the prompt, the image's included, came from the cache
    assert again.num_prefix_cached_tokens == (len(again.token_ids[:again.num_prompt_tokens]) - 1
                                              ) // 16 * 16
    assert again.output_token_ids == first.output_token_ids
    # the same placeholder tokens with another image: only the blocks before the image match
    image_start = changed.images[0].offset
    assert changed.num_prefix_cached_tokens == image_start // 16 * 16
