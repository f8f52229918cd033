"""Random-weight GGUF files shaped like real models, for the load and serving benchmarks.

    python -m bench.gguf_synth --shape llama-3.2-1b --type Q4_0 [--out PATH]

writes, once (an existing file is kept), ``$INFERMCP_CACHE_DIR/bench/<shape>-<type>.gguf``: a
GGUF of the shape's llama.cpp architecture (``llama``, ``qwen3moe`` or ``gemma3``) laid out as
llama.cpp's ``convert_hf_to_gguf.py`` + ``llama-quantize`` lay out such a checkpoint (tensor
names, tied embeddings without ``output.weight``, norms and the experts' router in F32, expert
weights in 3-D tensors), with rows of weights drawn from N(0, 0.02) and quantized by gguf-py's
``gguf.quants.quantize`` (one pool of rows a tensor kind, drawn from at random: see
:func:`tensor_data`). The weights are noise: the file measures loading and decoding speed and
memory, not text.

Shapes (``SHAPES``): ``llama-3.2-1b`` (hidden 2048, 16 layers, ffn 8192, 32/8 heads of 64, rope
theta 500000, context 131072, tied embeddings), ``llama-3-8b`` (4096, 32 layers, ffn 14336, 32/8
heads of 128, context 8192, a separate ``output.weight`` as Llama 3 8B has), ``qwen3-moe-1b`` (a
small Qwen3-MoE: hidden 1024, 24 layers each of 32 experts of ffn 512, 4 used a token, 16/4 heads
of 128, rope theta 1000000, untied: 1.4B parameters, 0.38B used a token), ``gemma-3-1b``
(Gemma 3 1B: hidden 1152, 26 layers, ffn 6912, 4/1 heads of 256, five sliding layers of window
512 in six, rope theta 1000000 and 10000 on the sliding layers, tied) and ``tiny`` (256, 2 layers,
ffn 512, 4/2 heads), ``tiny-qwen3-moe`` and ``tiny-gemma-3`` for checking the scripts. The
vocabulary is not the models' own: every
``tokenizer.*`` field is copied from the bundled SmolLM2 GGUF
(:func:`core.models.loader.default_gguf`), 49152 tokens instead of 128256, so the embedding (and
LM head) has 38% of the real rows: 1.07B parameters instead of 1.24B, 7.4B instead of 8.0B. The
decoder layers, most of the bytes and of the work per token, are the real ones.
``--vocabulary sentencepiece`` writes instead a synthetic SentencePiece vocabulary of
``--vocab-size`` tokens (default 262,144, Gemma 3's; file ``<shape>-<type>-spm.gguf``) laid out
as llama.cpp writes Gemma's: its five special tokens, the 256 byte tokens, then random pieces
of lower-case letters and ``\u2581`` scored by rank, no merges. It measures what a real
Gemma 3 file's vocabulary costs a start (its tokenizer built from the metadata, its
embedding's real rows); its text is noise too.

K-quant files (``--type Q4_K_M``, ``Q5_K_M``, ``Q6_K``) are what users download most, and gguf-py
cannot write them: the shape is written in F16 first (kept beside, as ``<shape>-f16.gguf``), then
quantized by llama.cpp's own ``llama_model_quantize``, run by llama-cpp-python from the anchor's
environment (``make bench-anchors``; ``--quantizer`` names its Python). That mixes types as
llama.cpp does for its users: a Q4_K_M file holds Q4_K, with Q6_K for the tied embedding and for
half the layers' ``attn_v`` and ``ffn_down``.

``token_embd`` is stored in the weights' type (``--embd-type`` to change it). llama.cpp's own
Q4_0 files of tied models keep it in Q6_K (the tied LM head's usual type), which gguf-py cannot
write; Q4_0 is the type llama.cpp's ``--pure`` Q4_0 files use. Both servers read the same file.

Memory: the writer is given every tensor's size first (``add_tensor_info``), writes the header,
then streams the tensors one by one (``write_tensor_data``), each drawn from its kind's pool of
``CHUNK_VALUES`` quantized values: the peak is the largest *quantized* tensor plus the pools
plus the interpreter, whatever the model's size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QType

from core.models.loader import cache_dir, default_gguf

WEIGHT_STD = 0.02
ROPE_THETA = 500000.0
RMS_EPS = 1e-5
CHUNK_VALUES = 1 << 22  # float32 values generated and quantized at a time (16 MB)
TYPES = {"Q4_0": QType.Q4_0, "Q4_1": QType.Q4_1, "Q8_0": QType.Q8_0, "F16": QType.F16}
# llama.cpp's ``llama_ftype`` of each K-quant mix (include/llama.h)
K_QUANTS = {"Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}
ANCHOR_PYTHON = Path(__file__).resolve().parents[1] / ".venv-anchors" / "bin" / "python"
QUANTIZE = """\
import ctypes, sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype, params.nthread = int(sys.argv[3]), 0
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(),
                                        ctypes.byref(params)))
"""


@dataclass(frozen=True)
class Shape:
    """A decoder-only model's dimensions, in the llama.cpp architecture ``arch``."""

    hidden: int
    layers: int
    ffn: int  # of the dense MLP (unused where every layer has experts)
    heads: int
    kv_heads: int
    context: int
    tied: bool = True  # no output.weight: the LM head is token_embd
    arch: str = "llama"  # llama, qwen3moe or gemma3
    head_size: int = 0  # 0: hidden / heads
    rope_theta: float = ROPE_THETA
    rms_eps: float = RMS_EPS
    experts: int = 0  # qwen3moe: experts a layer, how many a token, each one's ffn
    experts_used: int = 0
    expert_ffn: int = 0
    window: int = 0  # gemma3: the sliding layers' window

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden // self.heads


SHAPES = {
    "tiny": Shape(hidden=256, layers=2, ffn=512, heads=4, kv_heads=2, context=2048),
    "llama-3.2-1b": Shape(hidden=2048, layers=16, ffn=8192, heads=32, kv_heads=8, context=131072),
    "llama-3-8b": Shape(hidden=4096, layers=32, ffn=14336, heads=32, kv_heads=8, context=8192,
                        tied=False),
    "qwen3-moe-1b": Shape(hidden=1024, layers=24, ffn=3072, heads=16, kv_heads=4, context=32768,
                          tied=False, arch="qwen3moe", head_size=128, rope_theta=1e6,
                          rms_eps=1e-6, experts=32, experts_used=4, expert_ffn=512),
    "gemma-3-1b": Shape(hidden=1152, layers=26, ffn=6912, heads=4, kv_heads=1, context=32768,
                        arch="gemma3", head_size=256, rope_theta=1e6, rms_eps=1e-6, window=512),
    "tiny-qwen3-moe": Shape(hidden=256, layers=2, ffn=512, heads=4, kv_heads=2, context=2048,
                            tied=False, arch="qwen3moe", head_size=64, rope_theta=1e6,
                            rms_eps=1e-6, experts=8, experts_used=2, expert_ffn=128),
    "tiny-gemma-3": Shape(hidden=256, layers=6, ffn=512, heads=4, kv_heads=1, context=2048,
                          arch="gemma3", head_size=64, rope_theta=1e6, rms_eps=1e-6, window=16),
}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor as stored: llama.cpp name, (rows, cols) in numpy order, GGML type."""

    name: str
    shape: tuple[int, ...]
    qtype: QType

    @property
    def nbytes(self) -> int:
        block, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.shape[:-1], dtype=np.int64)) * self.shape[-1] // block * type_size


def default_path(shape: str, weight_type: str) -> Path:
    """Where ``--out`` defaults to: ``$INFERMCP_CACHE_DIR/bench/<shape>-<type>.gguf``."""
    return cache_dir() / "bench" / f"{shape}-{weight_type.lower()}.gguf"


def tensor_specs(shape: Shape, vocab: int, weight: QType, embd: QType) -> list[TensorSpec]:
    """Every tensor of ``shape`` in llama.cpp's order; 1-D norms and the router in F32, the LM
    head (when untied) in ``embd``'s type, as token_embd."""
    specs = [TensorSpec("token_embd.weight", (vocab, shape.hidden), embd)]
    for i in range(shape.layers):
        specs += _layer_specs(shape, f"blk.{i}.", weight)
    specs.append(TensorSpec("output_norm.weight", (shape.hidden,), QType.F32))
    if not shape.tied:
        specs.append(TensorSpec("output.weight", (vocab, shape.hidden), embd))
    return specs


def _layer_specs(shape: Shape, b: str, weight: QType) -> list[TensorSpec]:
    """One layer's tensors: attention with Qwen3's and Gemma 3's q/k norms, Gemma's norms after
    attention and the MLP, Qwen3-MoE's router and 3-D (experts, out, in) expert tensors."""
    h, d, f32 = shape.hidden, shape.head_dim, QType.F32
    q_rows, kv_rows = shape.heads * d, shape.kv_heads * d
    specs = [TensorSpec(b + "attn_norm.weight", (h,), f32),
             TensorSpec(b + "attn_q.weight", (q_rows, h), weight),
             TensorSpec(b + "attn_k.weight", (kv_rows, h), weight),
             TensorSpec(b + "attn_v.weight", (kv_rows, h), weight),
             TensorSpec(b + "attn_output.weight", (h, q_rows), weight)]
    if shape.arch != "llama":
        specs += [TensorSpec(b + "attn_q_norm.weight", (d,), f32),
                  TensorSpec(b + "attn_k_norm.weight", (d,), f32)]
    if shape.arch == "gemma3":
        specs.append(TensorSpec(b + "post_attention_norm.weight", (h,), f32))
    specs.append(TensorSpec(b + "ffn_norm.weight", (h,), f32))
    if shape.experts:
        e, ffn = shape.experts, shape.expert_ffn
        specs += [TensorSpec(b + "ffn_gate_inp.weight", (e, h), f32),
                  TensorSpec(b + "ffn_gate_exps.weight", (e, ffn, h), weight),
                  TensorSpec(b + "ffn_up_exps.weight", (e, ffn, h), weight),
                  TensorSpec(b + "ffn_down_exps.weight", (e, h, ffn), weight)]
    else:
        specs += [TensorSpec(b + "ffn_gate.weight", (shape.ffn, h), weight),
                  TensorSpec(b + "ffn_up.weight", (shape.ffn, h), weight),
                  TensorSpec(b + "ffn_down.weight", (h, shape.ffn), weight)]
    if shape.arch == "gemma3":
        specs.append(TensorSpec(b + "post_ffw_norm.weight", (h,), f32))
    return specs


def tokenizer_fields(path: Path) -> list[tuple[str, Any, gguf.GGUFValueType,
                                                gguf.GGUFValueType | None]]:
    """The ``tokenizer.*`` fields of the GGUF ``path`` as (key, value, type, array item type)."""
    reader = gguf.GGUFReader(path)
    return [(key, field.contents(), field.types[0],
             field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
            for key, field in reader.fields.items() if key.startswith("tokenizer.")]


def tensor_data(spec: TensorSpec, rng: np.random.Generator,
                pools: dict[tuple[QType, int], np.ndarray]) -> np.ndarray:
    """The stored bytes (or floats) of ``spec``, (rows, row bytes) whatever its dimensions;
    norms are ones (Gemma's too: llama.cpp's files hold 1 + w). Quantizing billions of values
    with gguf-py takes half an hour for an 8B shape, so one pool of rows of each (type, width),
    N(0, WEIGHT_STD) quantized once (``CHUNK_VALUES`` values), fills every tensor of that kind,
    its rows drawn at random: real blocks of the type, at no cost beyond a copy."""
    if len(spec.shape) == 1:
        return np.ones(spec.shape, dtype=np.float32)
    rows, cols = int(np.prod(spec.shape[:-1])), spec.shape[-1]
    key = (spec.qtype, cols)
    if key not in pools:
        chunk = rng.standard_normal((max(1, CHUNK_VALUES // cols), cols), dtype=np.float32)
        chunk *= WEIGHT_STD
        pools[key] = chunk if spec.qtype == QType.F32 else (
            chunk.astype(np.float16) if spec.qtype == QType.F16
            else gguf.quants.quantize(chunk, spec.qtype))
    pool = pools[key]
    return pool[rng.integers(0, len(pool), size=rows)]


def _add_metadata(writer: gguf.GGUFWriter, name: str, shape: Shape, vocab: int,
                  weight: QType) -> None:
    writer.add_name(name)
    writer.add_vocab_size(vocab)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_block_count(shape.layers)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_rope_dimension_count(shape.head_dim)
    if shape.head_size:
        writer.add_key_length(shape.head_size)
        writer.add_value_length(shape.head_size)
    if shape.experts:
        writer.add_expert_count(shape.experts)
        writer.add_expert_used_count(shape.experts_used)
        writer.add_expert_feed_forward_length(shape.expert_ffn)
    if shape.window:
        writer.add_sliding_window(shape.window)
        writer.add_rope_freq_base_swa(10000.0)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{weight.name}"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def sentencepiece_fields(size: int, seed: int = 0) -> list[tuple[str, Any, gguf.GGUFValueType,
                                                                 gguf.GGUFValueType | None]]:
    """The ``tokenizer.*`` fields of a synthetic SentencePiece vocabulary of ``size`` tokens,
    laid out as llama.cpp writes Gemma's (see the module's docstring)."""
    rng = np.random.default_rng(seed)
    specials = {"<pad>": 3, "<eos>": 3, "<bos>": 3, "<unk>": 2, "<mask>": 4}
    tokens = [*specials, *(f"<0x{byte:02X}>" for byte in range(256))]
    kinds = [*specials.values(), *[6] * 256]
    alphabet = "abcdefghijklmnopqrstuvwxyz\u2581"
    seen = set(tokens)
    while len(tokens) < size:
        lengths = rng.integers(1, 9, size - len(tokens))
        text = "".join(alphabet[code] for code in rng.integers(0, len(alphabet), lengths.sum()))
        ends = np.cumsum(lengths)
        for start, end in zip(ends - lengths, ends, strict=True):
            piece = text[start:end]
            if piece not in seen:
                seen.add(piece)
                tokens.append(piece)
    kinds += [1] * (size - len(kinds))
    value, array = gguf.GGUFValueType, gguf.GGUFValueType.ARRAY
    return [("tokenizer.ggml.model", "llama", value.STRING, None),
            ("tokenizer.ggml.pre", "default", value.STRING, None),
            ("tokenizer.ggml.tokens", tokens, array, value.STRING),
            ("tokenizer.ggml.scores", [-float(i) for i in range(size)], array, value.FLOAT32),
            ("tokenizer.ggml.token_type", kinds, array, value.INT32),
            *((f"tokenizer.ggml.{name}_token_id", tokens.index(token), value.UINT32, None)
              for name, token in (("bos", "<bos>"), ("eos", "<eos>"), ("unknown", "<unk>"),
                                  ("padding", "<pad>"))),
            ("tokenizer.ggml.add_bos_token", True, value.BOOL, None),
            ("tokenizer.chat_template", "{% for m in messages %}<start_of_turn>{{ m.role }}\n"
             "{{ m.content }}<end_of_turn>\n{% endfor %}<start_of_turn>model\n", value.STRING,
             None)]


def write_gguf(path: Path, shape: str | Shape, weight: QType, embd: QType, seed: int = 0,
               vocab_size: int | None = None) -> Path:
    """Write the random ``shape`` model (a name in ``SHAPES``, or a shape of the caller's)
    to ``path`` (through ``path``.tmp, renamed at the end, so a cut-short run leaves no file that
    looks finished): with the bundled tokenizer's vocabulary, or a synthetic SentencePiece one of
    ``vocab_size`` tokens."""
    if isinstance(shape, str):
        name, dims = shape, SHAPES[shape]
    else:
        name, dims = f"{shape.arch}-{shape.hidden}x{shape.layers}", shape
    fields = tokenizer_fields(default_gguf().resolve()) if vocab_size is None \
        else sentencepiece_fields(vocab_size, seed)
    vocab = next(len(value) for key, value, *_ in fields if key == "tokenizer.ggml.tokens")
    specs = tensor_specs(dims, vocab, weight, embd)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(tmp, dims.arch)
    _add_metadata(writer, f"synthetic-{name}", dims, vocab, weight)
    for key, value, vtype, sub_type in fields:
        writer.add_key_value(key, value, vtype, sub_type=sub_type)
    del fields
    for spec in specs:  # sizes first: the header is written before any data exists
        writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), spec.nbytes,
                               raw_dtype=spec.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    pools: dict[tuple[QType, int], np.ndarray] = {}
    for done, spec in enumerate(specs, 1):
        writer.write_tensor_data(tensor_data(spec, rng, pools))
        _progress(done, len(specs))
    writer.close()
    os.replace(tmp, path)
    return path


def quantize_k(source: Path, path: Path, mix: str, quantizer: Path) -> None:
    """``source`` (an F16 file) quantized into ``path`` as the K-quant ``mix``, by llama.cpp
    (llama-cpp-python run by ``quantizer``); a partial file is removed."""
    if not quantizer.is_file():
        raise SystemExit(f"{mix} files are written by llama.cpp's quantizer: install "
                         f"llama-cpp-python with `make bench-anchors` (looked for {quantizer})")
    partial = path.with_name(path.name + ".partial")
    done = subprocess.run([str(quantizer), "-c", QUANTIZE, str(source), str(partial),
                           str(K_QUANTS[mix])], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise SystemExit(f"llama_model_quantize failed ({done.returncode}): "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    partial.replace(path)


def _progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"  {done}/{total} tensors", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the generator CLI."""
    p = argparse.ArgumentParser(prog="python -m bench.gguf_synth", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    p.add_argument("--type", choices=sorted([*TYPES, *K_QUANTS]), default="Q4_0",
                   dest="weight_type", help="the linear weights' type, or a K-quant mix "
                   "(default: %(default)s)")
    p.add_argument("--embd-type", choices=sorted(TYPES), default=None,
                   help="token_embd's type (default: the weights' type)")
    p.add_argument("--vocabulary", choices=["bundled", "sentencepiece"], default="bundled",
                   help="the bundled tokenizer's, or a synthetic SentencePiece one "
                   "(default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=262144,
                   help="the SentencePiece vocabulary's tokens (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="output file (default: $INFERMCP_CACHE_DIR/bench/<shape>-<type>.gguf)")
    p.add_argument("--quantizer", type=Path, default=ANCHOR_PYTHON,
                   help="the Python with llama-cpp-python that writes K-quants "
                   "(default: the anchor's, %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.gguf_synth``: the file's path on stdout, its size on
    stderr."""
    args = build_parser().parse_args(argv)
    sentencepiece = args.vocabulary == "sentencepiece"
    if sentencepiece and args.weight_type in K_QUANTS:
        print("--vocabulary sentencepiece: gguf-py's types only", file=sys.stderr)
        return 2
    path = args.out or default_path(args.shape, args.weight_type + "-spm" * sentencepiece)
    if path.exists():
        print(f"exists, kept: {path}", file=sys.stderr)
    elif args.weight_type in K_QUANTS:
        source = f16_source(args.shape, args.seed)
        print(f"quantizing {source} to {args.weight_type} in {path} ...", file=sys.stderr)
        quantize_k(source, path, args.weight_type, args.quantizer)
    else:
        weight = TYPES[args.weight_type]
        embd = TYPES[args.embd_type] if args.embd_type else weight
        print(f"writing {args.shape} {args.weight_type} to {path} ...", file=sys.stderr)
        write_gguf(path, args.shape, weight, embd, args.seed,
                   args.vocab_size if sentencepiece else None)
    print(f"{path.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
    print(path)  # alone on stdout, for `M=$(python -m bench.gguf_synth ...)`
    return 0


def f16_source(shape: str, seed: int) -> Path:
    """The F16 file of ``shape`` a K-quant is made from (written once, then kept)."""
    path = default_path(shape, "F16")
    if not path.exists():
        print(f"writing {shape} F16 to {path} ...", file=sys.stderr)
        write_gguf(path, shape, QType.F16, QType.F16, seed)
    return path


if __name__ == "__main__":
    sys.exit(main())
