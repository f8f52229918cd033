"""The engine beside transformers on a vision checkpoint: the same chat (text and images)
through the checkpoint's processor, the first token's logits and greedy tokens compared."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from core.engine.llm_engine import EngineConfig, LLMEngine
from core.engine.model_runner import ModelRunner
from core.engine.params import SamplingParams
from core.engine.sequence import Sequence
from core.models.tokenizer import Tokenizer
from core.models.vision.processor import ImagePrompter, load_processor

LOGIT_ATOL = 1e-4


@dataclass(frozen=True)
class Picture:
    """An image as the front ends hand it on (core.chat.images.ImageData's fields)."""

    image: Any
    digest: str


def picture(width: int, height: int, seed: int) -> Picture:
    """A random RGB image (noise, so every patch differs)."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=gen, dtype=torch.uint8)
    image = Image.fromarray(pixels.numpy(), "RGB")
    return Picture(image, hashlib.sha256(image.tobytes()).hexdigest())


def chat(question: str, count: int) -> list[dict[str, Any]]:
    """One user message: ``count`` images, then the question."""
    parts: list[dict[str, Any]] = [{"type": "image"} for _ in range(count)]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": question}]}]


def engine(model_dir: Path, chunk: int = 512) -> tuple[LLMEngine, ImagePrompter, Tokenizer]:
    """A float32 engine on the checkpoint (``chunk`` tokens a step), its prompter and
    tokenizer."""
    runner = ModelRunner(model_dir, "float32", kv_cache_tokens=4096, block_size=16)
    llm = LLMEngine(runner, EngineConfig(max_seqs=8, max_seq_len=2048, max_batched_tokens=chunk))
    assert runner.vision_type is not None
    return llm, ImagePrompter(model_dir, runner.vision_type), Tokenizer.load(model_dir)


def generate(llm: LLMEngine, prompter: ImagePrompter, tokenizer: Tokenizer,
             requests: list[tuple[str, list[Picture]]], tokens: int
             ) -> list[tuple[Sequence, torch.Tensor]]:
    """Run the requests together: each one's sequence and its first token's logits."""
    first: dict[int, torch.Tensor] = {}
    run = llm.runner.run

    def keep_first(batch: Any, blocks: Any) -> torch.Tensor:
        logits = run(batch, blocks)
        for seq, row in zip(batch.sampling, logits, strict=True):
            first.setdefault(seq.seq_id, row.clone())
        return logits

    llm.runner.run = keep_first  # type: ignore[method-assign]
    seqs = []
    for i, (question, pictures) in enumerate(requests):
        text = tokenizer.render_chat(chat(question, len(pictures)))
        prompt = prompter.prompt(text, list(pictures))
        seq = llm.new_sequence(f"r{i}", prompt.token_ids,
                               SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True),
                               tokens)
        seq.images, seq.rope_positions, seq.rope_delta = (
            prompt.images, prompt.rope_positions, prompt.rope_delta)
        llm.add(seq)
        seqs.append(seq)
    while llm.scheduler.has_work:
        llm.step()
    llm.runner.run = run  # type: ignore[method-assign]
    return [(s, first[s.seq_id]) for s in seqs]


def transformers_reference(model_dir: Path, tokenizer: Tokenizer, question: str,
                           pictures: list[Picture], tokens: int, bidirectional: bool = True
                           ) -> tuple[list[int], torch.Tensor]:
    """transformers' greedy tokens and first-token logits for one request (``bidirectional``
    False: without the processor's ``token_type_ids``, by which Gemma 3's image tokens attend
    to each other both ways: causal attention only)."""
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    # transformers' AutoProcessor, or the family's where that needs what is not installed
    processor = load_processor(model_dir, json.loads((model_dir / "config.json").read_text())[
        "model_type"])
    text = tokenizer.render_chat(chat(question, len(pictures)))
    inputs = processor(text=text, images=[p.image for p in pictures] or None,
                       return_tensors="pt", add_special_tokens=False)
    if not bidirectional:
        inputs.pop("token_type_ids", None)
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].float()
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1]:].tolist(), logits


def check_requests(model_dir: Path, requests: list[tuple[str, list[Picture]]], chunk: int,
                   tokens: int) -> list[Sequence]:
    """Run ``requests`` together, ``chunk`` tokens a step; each one's first-token logits and
    greedy tokens equal transformers' for it alone. Returns the sequences."""
    llm, prompter, tokenizer = engine(model_dir, chunk)
    results = generate(llm, prompter, tokenizer, requests, tokens)
    for (question, pictures), (seq, logits) in zip(requests, results, strict=True):
        expected, reference = transformers_reference(model_dir, tokenizer, question, pictures,
                                                     tokens)
        torch.testing.assert_close(logits, reference, atol=LOGIT_ATOL, rtol=0)
        assert seq.output_token_ids == expected
    return [seq for seq, _ in results]


def check_two_images_batched_and_chunked(model_dir: Path, chunk: int, tokens: int) -> None:
    """Two images in one prompt, batched with a one-image and a text-only prompt, prefilled
    ``chunk`` tokens a step (chunks stop before each image): each as transformers computes it."""
    small, wide = picture(40, 40, seed=2), picture(130, 60, seed=3)
    check_requests(model_dir, [("Compare them.", [small, wide]), ("And this?", [wide]),
                               ("Text only.", [])], chunk, tokens)


def repeat_an_image(model_dir: Path, tokens: int, block: int = 16
                    ) -> tuple[Sequence, Sequence, torch.Tensor, torch.Tensor]:
    """One image asked about, then again, then another image in its place: the second request
    reads every full block of its prompt from the prefix cache, the image's included, and
    answers the same; the third only the blocks before the image. Returns the second and third
    sequences and their first-token logits."""
    llm, prompter, tokenizer = engine(model_dir)
    image, other = picture(64, 64, seed=4), picture(64, 64, seed=5)
    [(first, _)] = generate(llm, prompter, tokenizer, [("Describe it.", [image])], tokens)
    [(again, logits)] = generate(llm, prompter, tokenizer, [("Describe it.", [image])], tokens)
    [(changed, other_logits)] = generate(llm, prompter, tokenizer,
                                         [("Describe it.", [other])], tokens)
    assert first.num_prefix_cached_tokens == 0
    assert again.num_prefix_cached_tokens == (again.num_prompt_tokens - 1) // block * block
    assert again.output_token_ids == first.output_token_ids
    assert changed.num_prefix_cached_tokens == changed.images[0].offset // block * block
    return again, changed, logits, other_logits
