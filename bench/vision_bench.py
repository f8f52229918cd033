"""Time to first token of a request with one 512x512 image, on a SmolVLM-256M-shaped
checkpoint of random weights, through the real server (``make bench``).

    python -m bench.vision_bench [--requests 3] [--out bench/results-vision.md]

writes, once (an existing one is kept), ``$INFERMCP_CACHE_DIR/bench/smolvlm-256m/``: an
Idefics3 checkpoint of SmolVLM-256M-Instruct's shapes (a SigLIP encoder of hidden 768, 12
layers, 512-pixel tiles of 16-pixel patches; a pixel-shuffle connector of scale 4, 64 tokens a
tile; SmolLM2-135M's language model: hidden 576, 30 layers, 9/3 heads, ffn 1536), the bundled
tokenizer with Idefics3's special tokens, and SmolVLM's processor settings (images resized to at
most 2048 pixels a side, cut into 512-pixel tiles plus the whole image). A 512x512 image is so
read as 4 x 4 tiles and the whole: 17 tiles, 1,088 placeholders. Weights are noise: the run
measures time, not text.

Each request is streamed and carries a new image (no cache), then the last image is sent again
(its blocks come from the prefix cache); a text-only request of the same question is the
baseline. Output tokens: 8, ``ignore_eos``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

from bench.serve_bench import free_port, machine_summary, start_server, stop_server
from core.models.loader import cache_dir, default_gguf, gguf_metadata

# the tiny test checkpoint's special tokens and chat template: the same model, larger
from tests.core.models.vision.tiny_idefics3 import SPECIAL, TEMPLATE

QUESTION = "Describe this image."


def checkpoint() -> Path:
    """The SmolVLM-256M-shaped checkpoint, written on first use."""
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        LlamaConfig,
    )

    out = cache_dir() / "bench" / "smolvlm-256m"
    if (out / "processor_config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(gguf_metadata(default_gguf()))
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL})
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536,
                       num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                       max_position_embeddings=8192, rope_theta=100000.0,
                       tie_word_embeddings=True, eos_token_id=2)
    config = Idefics3Config(
        text_config=text.to_dict(), scale_factor=4, tie_word_embeddings=True,
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 512, "patch_size": 16},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(config).to(torch.bfloat16).save_pretrained(out)
    images = Idefics3ImageProcessorPil(size={"longest_edge": 2048},
                                       max_image_size={"longest_edge": 512})
    Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=64,
                      chat_template=TEMPLATE).save_pretrained(out)
    return out


def image_uri(seed: int, side: int = 512) -> str:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (side, side, 3), generator=gen, dtype=torch.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels.numpy(), "RGB").save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def ttft(base_url: str, image: str | None) -> tuple[float, float, int, int]:
    """(seconds to the first token, to the last, prompt tokens, of them cached)."""
    content: list[dict[str, object]] = [{"type": "text", "text": QUESTION}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    body = {"model": "default", "messages": [{"role": "user", "content": content}],
            "max_tokens": 8, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    start, first, usage = time.perf_counter(), None, {}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            deltas = [c.get("delta") or {} for c in chunk.get("choices") or []]
            if first is None and any(d.get("content") for d in deltas):
                first = time.perf_counter() - start
            usage = chunk.get("usage") or usage
    total = time.perf_counter() - start
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return first or total, total, usage.get("prompt_tokens", 0), cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results-vision.md"))
    args = parser.parse_args()
    model = checkpoint()
    port = free_port()
    command = f".venv/bin/infermcp serve --port {port} -m {model} --embedding-model none"
    handle = start_server(command, port)
    base = f"http://127.0.0.1:{port}"
    try:
        begin = time.perf_counter()
        while True:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        ready = time.perf_counter() - begin
        ttft(base, None)  # warm-up
        text = [ttft(base, None) for _ in range(args.requests)]
        images = [ttft(base, image_uri(seed)) for seed in range(args.requests)]
        again = ttft(base, image_uri(args.requests - 1))
    finally:
        stop_server(handle)
    rows = [("text only", text), ("one new 512x512 image", images),
            ("the same image again", [again])]
    lines = [
        "# Images in: time to first token (`python -m bench.vision_bench`)", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"- machine: {machine_summary()}",
        f"- model: `{model}`, SmolVLM-256M's shapes, random weights (see the script's "
        "docstring); default flags (float32 on the CPU)",
        f"- command: `{command}`; ready in {ready:.1f} s",
        f"- each request: the image, then \"{QUESTION}\", 8 output tokens, streamed", "",
        "| request | runs | prompt tokens | cached | TTFT s (median) | total s (median) |",
        "|---|---:|---:|---:|---:|---:|"]
    for label, runs in rows:
        lines.append(f"| {label} | {len(runs)} | {runs[0][2]} | {runs[-1][3]} | "
                     f"{statistics.median(r[0] for r in runs):.2f} | "
                     f"{statistics.median(r[1] for r in runs):.2f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
