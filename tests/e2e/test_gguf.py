"""GGUF files as users bring them, served by the real server: Q4_0, Q4_1, Q4_K, Q8_0, Q4_K_M and
Q5_K_M files (the last two with Q6_K, Q5_0 and Q5_1 tensors) of tiny random models (written here
with gguf-py and the bundled tokenizer), their own formats by default, and the first token's
log-probabilities close to transformers' on the file's dequantized weights (equal in float32);
a ~200 MB file's server grows by about the file's size; bad files end start-up with one line and
exit code 2."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import openai
import pytest
import torch
from gguf import GGMLQuantizationType as QType
from transformers import PreTrainedModel

from bench.gguf_synth import Shape, write_gguf
from core.models import kernels
from core.models.loader import default_gguf, gguf_metadata
from core.models.tokenizer import Tokenizer
from tests.core.models.gguf_files import (
    K_M_TYPES,
    corrupt_copies,
    round_trip,
    tiny_llama,
    tiny_qwen2,
    tiny_qwen3,
    write_tiny_gguf,
)
from tests.e2e.conftest import Server, launch, serve_each_twice
from tests.e2e.test_families import check_served_like_transformers

PROMPT = [504, 3458, 282, 4649, 314, 1638, 30, 198]
# The _K_M recipes' Q6_K tensors, and on one tensor each the type llama.cpp falls back to where
# rows are not whole super-blocks of 256 (Q5_0 for Q4_K, Q5_1 for Q5_K; Qwen2-0.5B's 896-wide
# rows, say): every type served here in its own form
Q4_K_M = K_M_TYPES | {"blk.1.ffn_down.weight": QType.Q5_0}
Q5_K_M = K_M_TYPES | {"blk.1.ffn_down.weight": QType.Q5_1}
# id: (model, weight type, token_embd type, types of particular tensors): what llama.cpp's
# quantizer writes, in small; a mixed file's main type names its format
FILES: dict[str, tuple[Callable[[], PreTrainedModel], QType, QType, dict[str, QType]]] = {
    "q4_0": (tiny_llama, QType.Q4_0, QType.Q4_0, {}),
    "q4_k": (tiny_llama, QType.Q4_K, QType.F16, {}),
    "q8_0": (tiny_qwen2, QType.Q8_0, QType.Q8_0, {}),
    "q4_1": (tiny_qwen3, QType.Q4_1, QType.Q4_1, {}),
    "q4_k_m": (partial(tiny_llama, tie=False), QType.Q4_K, QType.Q4_K, Q4_K_M),
    "q5_k_m": (tiny_qwen2, QType.Q5_K, QType.Q5_K, Q5_K_M)}
FORMATS = {"q4_0": "int4", "q4_k": "int4", "q8_0": "int8", "q4_1": "int4", "q4_k_m": "int4",
           "q5_k_m": "int5"}
ARCHITECTURES = {"q4_0": "llama", "q4_k": "llama", "q8_0": "qwen2", "q4_1": "qwen3",
                 "q4_k_m": "llama", "q5_k_m": "qwen2"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, PreTrainedModel]]:
    folder = tmp_path_factory.mktemp("gguf")
    written = {}
    for name, (make, qtype, embedding, types) in FILES.items():
        model = make()
        path = write_tiny_gguf(folder / f"{name}.gguf", model, qtype, embedding_type=embedding,
                               types=types)
        written[name] = (path, round_trip(model, qtype, embedding, types))
    return written


@pytest.fixture(scope="module")
def gguf_server(files: dict[str, tuple[Path, PreTrainedModel]],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Each file twice: in its own format (the default) and in float32 (``isq = "none"``)."""
    with serve_each_twice({name: path for name, (path, _) in files.items()},
                          tmp_path_factory.mktemp("gguf-server")) as server:
        yield server


def test_each_file_runs_in_its_own_format(gguf_server: Server) -> None:
    cards = {c["id"]: c for c in httpx.get(f"{gguf_server.base_url}/v1/models").json()["data"]}
    for name, format_ in FORMATS.items():
        if format_ == "int5" and not kernels.available():  # 5-bit weights need our kernels
            format_ = "int8"
        assert cards[name]["quantization"] == format_
        assert cards[f"{name}-f32"]["quantization"] == "none"
        assert cards[name]["architecture"] == ARCHITECTURES[name]


@pytest.mark.parametrize("name", list(FILES))
def test_served_logprobs_equal_transformers_on_the_files_weights(
        gguf_server: Server, files: dict[str, tuple[Path, PreTrainedModel]], name: str) -> None:
    """In float32 the first token and its log-probability match transformers' model holding
    the file's dequantized weights to 1e-3. In the file's own format, where the activations go
    to int8 a block of 32 as llama.cpp's do, the first token is the same and the five likeliest
    are among transformers' likeliest, their log-probabilities within 0.3 (0.18 at most
    measured)."""
    path, reference = files[name]
    with torch.no_grad():
        expected = torch.log_softmax(reference(torch.tensor([PROMPT])).logits[0, -1].float(), -1)
    token_id = int(expected.argmax())
    tokenizer = Tokenizer.load(gguf_metadata(path))
    client = openai.OpenAI(base_url=f"{gguf_server.base_url}/v1", api_key="x", max_retries=0)
    exact = client.completions.create(model=f"{name}-f32", prompt=PROMPT, max_tokens=1,
                                      temperature=0, logprobs=1)
    logprobs = exact.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.token_logprobs
    assert logprobs.tokens[0] == tokenizer.token_text(token_id)
    assert logprobs.token_logprobs[0] == pytest.approx(float(expected[token_id]), abs=1e-3)
    native = client.completions.create(model=name, prompt=PROMPT, max_tokens=8, temperature=0,
                                       logprobs=5)
    assert native.choices[0].finish_reason == "length" and native.usage is not None
    assert native.usage.completion_tokens == 8
    first = native.choices[0].logprobs
    assert first is not None and first.tokens and first.top_logprobs
    assert first.tokens[0] == tokenizer.token_text(token_id)
    likeliest = {tokenizer.token_text(int(i)): float(expected[i])
                 for i in expected.topk(50).indices}
    assert len(first.top_logprobs[0]) == 5
    for text, value in first.top_logprobs[0].items():
        assert value == pytest.approx(likeliest[text], abs=0.3), text


@pytest.mark.parametrize("name", ["q4_0", "q8_0", "q4_1"])
def test_greedy_batched_and_cached_tokens_are_transformers(
        gguf_server: Server, files: dict[str, tuple[Path, PreTrainedModel]], name: str) -> None:
    """Llama, Qwen2 and Qwen3 files in float32: 32 greedy tokens equal transformers' generate
    on the file's weights, alone, 8 at once, and with the prompt from the prefix cache."""
    path, reference = files[name]
    check_served_like_transformers(gguf_server, f"{name}-f32", reference,
                                   Tokenizer.load(gguf_metadata(path)))


def test_the_metadata_cache_holds_no_weights(files: dict[str, tuple[Path, PreTrainedModel]],
                                             gguf_server: Server) -> None:
    for path, _ in files.values():
        cached = sum(f.stat().st_size for f in gguf_metadata(path).iterdir())
        assert cached < 10 << 20 and not list(gguf_metadata(path).glob("*.safetensors"))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infermcp", "serve", "--embedding-model", "none",
                           "--port", "1", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("kind", "reason"), [
    ("truncated", "truncated: tensor"), ("bad_magic", "not a GGUF file"),
    ("unknown_type", "has the unknown quantization type 31420"),
])
def test_a_bad_file_ends_start_up_with_one_line(files: dict[str, tuple[Path, PreTrainedModel]],
                                                tmp_path: Path, kind: str, reason: str) -> None:
    bad = corrupt_copies(files["q4_0"][0], tmp_path)[kind]
    r = run_cli("-m", str(bad))
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"infermcp: error: {bad}: ") and reason in line
    assert "Traceback" not in r.stderr


def test_an_unsupported_architecture_ends_start_up_with_one_line(tmp_path: Path) -> None:
    source = default_gguf().read_bytes()
    name = b"general.architecture"
    at = source.index(name) + len(name) + 4 + 8  # past the key, the value type and its length
    assert source[at:at + 5] == b"llama"
    bad = tmp_path / "falcon.gguf"
    bad.write_bytes(source[:at] + b"gemma" + source[at + 5:])  # same length: the file stays valid
    r = run_cli("-m", str(bad))
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"infermcp: error: {bad}") and "gemma" in line
    assert "Traceback" not in r.stderr


# 354M parameters: 199 MB in Q4_0, 1.4 GB in float32
SERVED_SHAPE = Shape(hidden=1024, layers=20, ffn=4096, heads=16, kv_heads=4, context=2048)
LOAD_MARGIN = 64 << 20


def _serving_peak(path: Path, folder: Path) -> int:
    """The server's own peak RSS (VmHWM, bytes) once it has loaded ``path`` in its own format
    and answered a request from it."""
    args = ["-m", str(path), "--embedding-model", "none", "--max-seqs", "1", "--max-seq-len",
            "256"]
    with launch(args, folder / f"{path.stem}.log") as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused")
        reply = client.completions.create(model=server.model_id, prompt="Hello", max_tokens=4,
                                          extra_body={"ignore_eos": True})
        assert reply.usage is not None and reply.usage.completion_tokens == 4
        status = Path(f"/proc/{server.pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024


def test_serving_a_200_mb_file_grows_memory_by_about_its_size(tmp_path: Path) -> None:
    """A Llama-shaped Q4_0 file of about 200 MB (random weights, written by bench.gguf_synth)
    and a tiny one of the same vocabulary, each served by a server of its own: the big file's
    server peaks at most its extra bytes plus 64 MiB above the tiny one's. Imports, the
    tokenizer and the kernels' first use are the same in both; a model inflated to float32
    on the way in would add 1.4 GB."""
    big = write_gguf(tmp_path / "big.gguf", SERVED_SHAPE, QType.Q4_0, QType.Q4_0)
    tiny = write_gguf(tmp_path / "tiny.gguf", "tiny", QType.Q4_0, QType.Q4_0)
    extra = big.stat().st_size - tiny.stat().st_size
    assert 180e6 < big.stat().st_size < 220e6
    grown = _serving_peak(big, tmp_path) - _serving_peak(tiny, tmp_path)
    assert grown <= extra + LOAD_MARGIN, f"grew {grown >> 20} MiB for {extra >> 20} MiB more file"
