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
    check_two_images_batched_and_chunked,
    engine,
    generate,
    picture,
    repeat_an_image,
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
    check_two_images_batched_and_chunked(model_dir, chunk=32, tokens=TOKENS)


def test_a_repeated_image_is_read_from_the_prefix_cache(model_dir: Path) -> None:
    repeat_an_image(model_dir, tokens=4)
