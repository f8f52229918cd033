"""Qwen2-VL and Qwen2.5-VL on the engine equal transformers: logits of the first token and
greedy tokens, for one image, two images in one prompt, batched requests, chunked prefill and
a repeated image read from the prefix cache; the prompt's M-RoPE positions are those of
transformers' ``get_rope_index``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForImageTextToText

from core.errors import ModelLoadError
from core.models.families import read_config
from core.models.tokenizer import Tokenizer
from core.models.vision import qwen2_vl
from core.models.vision.processor import load_processor
from tests.core.models.vision import tiny_qwen2_vl
from tests.core.models.vision.reference import (
    LOGIT_ATOL,
    chat,
    check_two_images_batched_and_chunked,
    engine,
    generate,
    picture,
    repeat_an_image,
    transformers_reference,
)

TOKENS = 16


@pytest.fixture(scope="module", params=tiny_qwen2_vl.MODEL_TYPES)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> Path:
    return tiny_qwen2_vl.write(tmp_path_factory.mktemp(request.param), model_type=request.param)


def test_one_image_matches_transformers(model_dir: Path) -> None:
    llm, prompter, tokenizer = engine(model_dir)
    image = picture(100, 70, seed=1)  # 3 x 4 placeholders
    [(seq, logits)] = generate(llm, prompter, tokenizer, [("What is this?", [image])], TOKENS)
    tokens, reference = transformers_reference(model_dir, tokenizer, "What is this?", [image],
                                               TOKENS)
    torch.testing.assert_close(logits, reference, atol=LOGIT_ATOL, rtol=0)
    assert seq.output_token_ids == tokens
    assert seq.rope_delta < 0  # the image's 12 placeholders take 4 positions
    assert llm.runner.graphs is not None and llm.runner.graphs.graphs  # decode steps recorded


def test_two_images_batched_and_chunked(model_dir: Path) -> None:
    check_two_images_batched_and_chunked(model_dir, chunk=24, tokens=TOKENS)


def test_a_repeated_image_is_read_from_the_prefix_cache(model_dir: Path) -> None:
    repeat_an_image(model_dir, tokens=4)


def hf_config(model_dir: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    return config


def test_rope_positions_are_transformers_get_rope_index(model_dir: Path) -> None:
    processor = load_processor(model_dir, hf_config(model_dir)["model_type"])
    tokenizer = Tokenizer.load(model_dir)
    # square, wide, tall and the smallest image, text between and after
    pictures = [picture(64, 64, 6), picture(130, 60, 7), picture(30, 120, 8), picture(8, 8, 9)]
    text = tokenizer.render_chat(chat("Which differ?", len(pictures)))
    outputs = processor(text=text, images=[p.image for p in pictures], return_tensors="pt",
                        add_special_tokens=False)
    token_ids = outputs["input_ids"][0].tolist()
    positions, delta = qwen2_vl.rope_positions(processor, token_ids, outputs)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    expected, deltas = model.model.get_rope_index(
        outputs["input_ids"], outputs["mm_token_type_ids"], outputs["image_grid_thw"])
    assert torch.equal(positions, expected[:, 0])
    assert delta == int(deltas[0, 0])
    assert len(qwen2_vl.images(processor, token_ids, outputs)) == len(pictures)


def test_the_language_model_is_qwen2_with_mrope(model_dir: Path) -> None:
    nested = hf_config(model_dir)
    _, config = read_config(nested)
    assert config.model_type == "qwen2" and config.attention_bias
    assert config.rope_scaling.mrope_section == (2, 3, 3)
    # a flat config as on the Hub, with transformers 4's rope_scaling
    flat = {k: v for k, v in nested.items() if k != "text_config"} | nested["text_config"]
    flat.pop("rope_parameters")
    flat |= {"model_type": nested["model_type"], "rope_theta": 10000.0,
             "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
    assert read_config(flat)[1] == config
    with pytest.raises(ModelLoadError, match="mrope_section"):
        read_config(flat | {"rope_scaling": {"type": "mrope", "mrope_section": [4, 4, 4]}})
