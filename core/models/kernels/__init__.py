"""CPU kernels of our own (AVX2), for the decode step's operations torch runs slowly here.
On a CPU with AVX-512 VNNI the integer matmuls use its vpdpbusd (:func:`compiler_flags`):
the same integer sums, 1.1-1.6x the multiply-adds a second at 16 rows.

- ``torch.ops.infermcp.q4_matmul`` (``q4_matmul.cpp``): float32 activations times 4-bit weights.
  torch's own 4-bit CPU kernel (``aten._weight_int4pack_mm_for_cpu``) is vectorized for AVX-512
  and ran a decode step 10x slower than float32 on an AVX2 CPU.
- ``torch.ops.infermcp.q4k_matmul`` (``q4_matmul.cpp``): the same with a Q4_K file's scales as
  it holds them (6-bit codes and their super-block's float16 multipliers).
- ``torch.ops.infermcp.q4_matmul_experts`` and ``q4k_matmul_experts`` (``q4_matmul.cpp``): row
  e of the activations times expert e's 4-bit weights, all in one call (a mixture's chosen
  experts for one token).
- ``torch.ops.infermcp.q5_matmul`` and ``q5k_matmul`` (``q4_matmul.cpp``): the same for 5-bit
  codes (Q5_0, Q5_1, Q5_K as the file holds them), their fifth bits beside the nibbles.
- ``torch.ops.infermcp.q8_matmul`` (``q8_matmul.cpp``): float32 activations times a file's
  weights in 8-bit blocks (Q8_0; Q5_0, Q5_1, Q5_K and Q6_K where their own kernels do not take
  them), as the file holds them.
- ``torch.ops.infermcp.q6_matmul`` (``q6_matmul.cpp``): the same for Q6_K weights in 6 bits a
  code, with the file's 8-bit scales and float16 multipliers (``q6_pack`` packs the codes).
- ``torch.ops.infermcp.decode_attention`` (``decode_attention.cpp``): decoding rows attend over
  the paged KV cache in place (float32 or float16), instead of copying each row's context out
  and running SDPA.
- ``torch.ops.infermcp.rms_norm`` (``rms_norm.cpp``): one pass a row instead of five kernels.
- ``torch.ops.infermcp.rope_and_cache`` (``rope_cache.cpp``): rotary embedding of queries and
  keys in place and the write of keys and values into the paged cache (rounded to float16 for
  a float16 cache), in one pass.
- ``torch.ops.infermcp.silu_mul`` and ``gelu_tanh_mul`` (``silu_mul.cpp``): the gated MLP's
  silu(gate) * up, or Gemma's tanh-approximated gelu(gate) * up.
- ``torch.ops.infermcp.q4k_decode`` and ``q6k_decode`` (``gguf_decode.cpp``): a GGUF's Q4_K
  and Q6_K tensors decoded in one pass (:mod:`core.models.gguf` computes the same with torch).
- ``torch.ops.infermcp.gguf_tiles`` (``gguf_decode.cpp``): a GGUF's Q4_0, Q4_1, Q4_K, Q5_0,
  Q5_1, Q5_K, Q8_0 and Q6_K tensors written from the file's bytes straight into the kernels'
  tiled layouts.

The sources are compiled by torch's C++ extension builder (g++ and ninja) into
``$INFERMCP_CACHE_DIR/kernels`` and reused from there (``make install`` builds them). The model
runner asks :func:`available` once, while it loads a model, so a build happens then and not in
the first request; the layers keep the answer. Where the kernels cannot be built or the CPU lacks
AVX2 and FMA, or ``INFERMCP_KERNELS=0`` is set (for A/B measurements), it says no and the layers
use torch's operations.

torch's builder marks a build under way with a ``lock`` file in the build directory and waits,
without a bound, for another's to go; a build that was killed leaves it behind. So builds and
loads here hold an ``flock`` of our own beside it, which the kernel releases when its process
ends: whoever holds that lock knows a ``lock`` file it finds is stale, and removes it. A live
build by another process is waited for at most :data:`BUILD_WAIT_S` seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

from core.models.loader import cache_dir

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name)
           for name in ("q4_matmul.cpp", "q8_matmul.cpp", "q6_matmul.cpp", "decode_attention.cpp",
                        "rms_norm.cpp", "rope_cache.cpp", "silu_mul.cpp", "gguf_decode.cpp")]
HEADER = Path(__file__).with_name("avx2.h")
AVX512_VNNI = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")  # /proc/cpuinfo's names
OPS = ("q4_matmul", "q4k_matmul", "q4_matmul_experts", "q4k_matmul_experts", "q5_matmul",
       "q5k_matmul", "q8_matmul", "q6_matmul", "q6_pack", "decode_attention", "rms_norm",
       "rope_and_cache", "silu_mul", "gelu_tanh_mul", "q4k_decode", "q6k_decode", "gguf_tiles")
LIBRARY = "infermcp_kernels.so"
TORCH_LOCK = "lock"  # torch's builder's, see torch.utils.file_baton
OWN_LOCK = "infermcp.flock"
# how long to wait for another process's build: a cold one took 54 s on a 2-core machine
BUILD_WAIT_S = 300.0

_lock = threading.Lock()
_loaded: bool | None = None


def cpu_flags() -> frozenset[str]:
    """This CPU's instruction set flags (from /proc/cpuinfo on Linux; none elsewhere)."""
    try:
        line = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return frozenset()
    return frozenset(line.split())


def cpu_has_avx2() -> bool:
    """Whether this CPU runs AVX2, FMA and F16C instructions."""
    return {"avx2", "fma", "f16c"} <= cpu_flags()


def compiler_flags(flags: frozenset[str]) -> list[str]:
    """AVX2 and FMA; and, on a CPU with AVX-512 VNNI, that too, whose one instruction (vpdpbusd
    on 256-bit registers) does the integer matmuls' multiply, pairwise add and widening of
    AVX2's three (the kernels choose by ``__AVX512VNNI__``). The build is this machine's own:
    its directory is named by the flags (:func:`build_dir`)."""
    base = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"]
    if set(AVX512_VNNI) <= flags:
        base += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni",
                 "-mprefer-vector-width=256"]
    return base


FLAGS = compiler_flags(cpu_flags())


def available() -> bool:
    """Whether the ``torch.ops.infermcp`` kernels run here. The first call builds or loads
    them (the model runner makes it while it loads a model); later ones return its answer."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded


def _fingerprint() -> str:
    """A digest of the sources and flags: a change to either builds afresh."""
    digest = hashlib.sha256(" ".join(FLAGS).encode())
    for source in [*SOURCES, HEADER]:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def build_dir() -> Path:
    """Where these sources, built by this torch, live."""
    return cache_dir() / "kernels" / f"torch-{torch.__version__}-{_fingerprint()}"


def _build(build: Path) -> None:
    # torch's builder looks for ninja on PATH; a virtual environment's own may not be on it
    env_bin = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and env_bin not in os.environ.get("PATH", ""):
        os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")
    from torch.utils import cpp_extension

    log.info("kernels: building them into %s (once per install; about a minute)", build)
    started = time.monotonic()
    cpp_extension.load(name="infermcp_kernels", sources=[str(p) for p in SOURCES],
                       extra_cflags=FLAGS, build_directory=str(build), is_python_module=False,
                       verbose=False)
    log.info("kernels: built in %.0f s", time.monotonic() - started)


def lock_build(build: Path, timeout: float) -> int | None:
    """An exclusive ``flock`` on ``build``'s own lock file, waited for at most ``timeout``
    seconds: its descriptor (closing it releases the lock), or None when another process still
    holds it."""
    fd = os.open(build / OWN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.1)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def remove_stale_lock(build: Path) -> bool:
    """Remove torch's lock file from ``build``, if there is one; whether there was. Call it
    holding :func:`lock_build`'s lock, under which no other build of ours runs: the file is
    what a killed build left."""
    lock = build / TORCH_LOCK
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    log.warning("kernels: removing the stale build lock %s, left %.0f s ago by a build that "
                "did not finish; building again", lock, age)
    lock.unlink(missing_ok=True)
    return True


def _load() -> bool:
    if os.environ.get("INFERMCP_KERNELS", "1") == "0":
        log.info("kernels: turned off by INFERMCP_KERNELS=0; using torch's operations")
        return False
    if not cpu_has_avx2():
        log.info("kernels: this CPU lacks AVX2/FMA/F16C; using torch's operations")
        return False
    build = build_dir()
    try:
        build.mkdir(parents=True, exist_ok=True)
        fd = lock_build(build, BUILD_WAIT_S)
        if fd is None:
            log.warning("kernels: another process has been building them in %s for over %.0f s;"
                        " using torch's operations", build, BUILD_WAIT_S)
            return False
        try:
            # built before from these very sources, and not left half-written by a killed
            # build: load it (~10 ms); else build (or finish building: ninja redoes only
            # what is missing). Importing the builder alone takes a second.
            if not remove_stale_lock(build) and (build / LIBRARY).exists():
                torch.ops.load_library(str(build / LIBRARY))
            else:
                _build(build)
        finally:
            os.close(fd)
    except Exception as exc:  # any failure means: use torch's operations
        log.warning("kernels could not be built or loaded (%s); using torch's operations", exc)
        return False
    return all(hasattr(torch.ops.infermcp, op) for op in OPS)
