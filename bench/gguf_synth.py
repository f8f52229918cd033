"""Random-weight GGUF files shaped like real models, for the load and serving benchmarks.

    python -m bench.gguf_synth --shape llama-3.2-1b --type Q4_0 [--out PATH]

writes, once (an existing file is kept), ``$INFERMCP_CACHE_DIR/bench/<shape>-<type>.gguf``: a
``llama`` GGUF laid out as llama.cpp's ``convert_hf_to_gguf.py`` + ``llama-quantize`` lay out a
Llama checkpoint (tensor names and order, tied embeddings without ``output.weight``, norms in
F32), with rows of weights drawn from N(0, 0.02) and quantized by gguf-py's ``gguf.quants.quantize``
(one pool of rows a tensor kind, drawn from at random: see :func:`tensor_data`).
The weights are noise: the file measures loading and decoding speed and memory, not text.

Shapes (``SHAPES``): ``llama-3.2-1b`` (hidden 2048, 16 layers, ffn 8192, 32/8 heads of 64, rope
theta 500000, context 131072, tied embeddings), ``llama-3-8b`` (4096, 32 layers, ffn 14336, 32/8
heads of 128, context 8192, a separate ``output.weight`` as Llama 3 8B has) and ``tiny`` (256, 2
layers, ffn 512, 4/2 heads) for checking the scripts. The vocabulary is not Llama 3's: every
``tokenizer.*`` field is copied from the bundled SmolLM2 GGUF
(:func:`core.models.loader.default_gguf`), 49152 tokens instead of 128256, so the embedding (and
LM head) has 38% of the real rows: 1.07B parameters instead of 1.24B, 7.4B instead of 8.0B. The
decoder layers, most of the bytes and of the work per token, are the real ones.

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


@dataclass(frozen=True)
class Shape:
    """A decoder-only Llama's dimensions."""

    hidden: int
    layers: int
    ffn: int
    heads: int
    kv_heads: int
    context: int
    tied: bool = True  # no output.weight: the LM head is token_embd

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES = {
    "tiny": Shape(hidden=256, layers=2, ffn=512, heads=4, kv_heads=2, context=2048),
    "llama-3.2-1b": Shape(hidden=2048, layers=16, ffn=8192, heads=32, kv_heads=8, context=131072),
    "llama-3-8b": Shape(hidden=4096, layers=32, ffn=14336, heads=32, kv_heads=8, context=8192,
                        tied=False),
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
    """Every tensor of the Llama ``shape`` in llama.cpp's order; 1-D norms in F32, the LM
    head (when untied) in ``embd``'s type, as token_embd."""
    h, q_rows, kv_rows = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    specs = [TensorSpec("token_embd.weight", (vocab, h), embd)]
    for i in range(shape.layers):
        b = f"blk.{i}."
        specs += [
            TensorSpec(b + "attn_norm.weight", (h,), QType.F32),
            TensorSpec(b + "attn_q.weight", (q_rows, h), weight),
            TensorSpec(b + "attn_k.weight", (kv_rows, h), weight),
            TensorSpec(b + "attn_v.weight", (kv_rows, h), weight),
            TensorSpec(b + "attn_output.weight", (h, q_rows), weight),
            TensorSpec(b + "ffn_norm.weight", (h,), QType.F32),
            TensorSpec(b + "ffn_gate.weight", (shape.ffn, h), weight),
            TensorSpec(b + "ffn_up.weight", (shape.ffn, h), weight),
            TensorSpec(b + "ffn_down.weight", (h, shape.ffn), weight),
        ]
    specs.append(TensorSpec("output_norm.weight", (h,), QType.F32))
    if not shape.tied:
        specs.append(TensorSpec("output.weight", (vocab, h), embd))
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
    """The stored bytes (or floats) of ``spec``; norms are ones. Quantizing billions of values
    with gguf-py takes half an hour for an 8B shape, so one pool of rows of each (type, width),
    N(0, WEIGHT_STD) quantized once (``CHUNK_VALUES`` values), fills every tensor of that kind,
    its rows drawn at random: real blocks of the type, at no cost beyond a copy."""
    if len(spec.shape) == 1:
        return np.ones(spec.shape, dtype=np.float32)
    rows, cols = spec.shape
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
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{weight.name}"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_gguf(path: Path, shape_name: str, weight: QType, embd: QType, seed: int = 0) -> Path:
    """Write the random ``shape_name`` model to ``path`` (through ``path``.tmp, renamed at the
    end, so a cut-short run leaves no file that looks finished)."""
    shape = SHAPES[shape_name]
    fields = tokenizer_fields(default_gguf().resolve())
    vocab = next(len(value) for key, value, *_ in fields if key == "tokenizer.ggml.tokens")
    specs = tensor_specs(shape, vocab, weight, embd)
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(tmp, "llama")
    _add_metadata(writer, f"synthetic-{shape_name}", shape, vocab, weight)
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


def _progress(done: int, total: int) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"  {done}/{total} tensors", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the generator CLI."""
    p = argparse.ArgumentParser(prog="python -m bench.gguf_synth", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.2-1b")
    p.add_argument("--type", choices=sorted(TYPES), default="Q4_0", dest="weight_type",
                   help="the linear weights' type (default: %(default)s)")
    p.add_argument("--embd-type", choices=sorted(TYPES), default=None,
                   help="token_embd's type (default: the weights' type)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="output file (default: $INFERMCP_CACHE_DIR/bench/<shape>-<type>.gguf)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.gguf_synth``: the file's path on stdout, its size on
    stderr."""
    args = build_parser().parse_args(argv)
    path = args.out or default_path(args.shape, args.weight_type)
    if path.exists():
        print(f"exists, kept: {path}", file=sys.stderr)
    else:
        weight = TYPES[args.weight_type]
        embd = TYPES[args.embd_type] if args.embd_type else weight
        print(f"writing {args.shape} {args.weight_type} to {path} ...", file=sys.stderr)
        write_gguf(path, args.shape, weight, embd, args.seed)
    print(f"{path.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
    print(path)  # alone on stdout, for `M=$(python -m bench.gguf_synth ...)`
    return 0


if __name__ == "__main__":
    sys.exit(main())
