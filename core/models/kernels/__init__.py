"""CPU kernels of our own (AVX2), for the decode step's operations torch runs slowly here.

- ``torch.ops.infermcp.q4_matmul`` (``q4_matmul.cpp``): float32 activations times 4-bit weights.
  torch's own 4-bit CPU kernel (``aten._weight_int4pack_mm_for_cpu``) is vectorized for AVX-512
  and ran a decode step 10x slower than float32 on an AVX2 CPU.
- ``torch.ops.infermcp.decode_attention`` (``decode_attention.cpp``): decoding rows attend over
  the paged KV cache in place, instead of copying each row's context out and running SDPA.
- ``torch.ops.infermcp.rms_norm`` (``rms_norm.cpp``): one pass a row instead of five kernels.
- ``torch.ops.infermcp.rope_and_cache`` (``rope_cache.cpp``): rotary embedding of queries and
  keys in place and the write of keys and values into the paged cache, in one pass.
- ``torch.ops.infermcp.silu_mul`` (``silu_mul.cpp``): the gated MLP's silu(gate) * up.

The sources are compiled on first use by torch's C++ extension builder (g++ and ninja) into
``$INFERMCP_CACHE_DIR/kernels`` and reused from there (``make install`` builds them). Where they
cannot be built or the CPU lacks AVX2 and FMA, or ``INFERMCP_KERNELS=0`` is set (for A/B
measurements), :func:`available` says no and callers use torch's operations.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
from pathlib import Path

import torch

from core.models.loader import cache_dir

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name)
           for name in ("q4_matmul.cpp", "decode_attention.cpp", "rms_norm.cpp",
                        "rope_cache.cpp", "silu_mul.cpp")]
HEADER = Path(__file__).with_name("avx2.h")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp"]
OPS = ("q4_matmul", "decode_attention", "rms_norm", "rope_and_cache", "silu_mul")

_lock = threading.Lock()
_loaded: bool | None = None


def cpu_has_avx2() -> bool:
    """Whether this CPU runs AVX2 and FMA instructions (read from /proc/cpuinfo on Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return False
    return "avx2" in flags and "fma" in flags


def available() -> bool:
    """Whether the ``torch.ops.infermcp`` kernels run here, building them on the first call."""
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


def _build(build: Path) -> None:
    build.mkdir(parents=True, exist_ok=True)
    # torch's builder looks for ninja on PATH; a virtual environment's own may not be on it
    env_bin = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and env_bin not in os.environ.get("PATH", ""):
        os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")
    from torch.utils import cpp_extension

    cpp_extension.load(name="infermcp_kernels", sources=[str(p) for p in SOURCES],
                       extra_cflags=FLAGS, build_directory=str(build), is_python_module=False,
                       verbose=False)


def _load() -> bool:
    if os.environ.get("INFERMCP_KERNELS", "1") == "0":
        log.info("kernels: turned off by INFERMCP_KERNELS=0; using torch's operations")
        return False
    if not cpu_has_avx2():
        log.info("kernels: this CPU lacks AVX2/FMA; using torch's operations")
        return False
    build = cache_dir() / "kernels" / f"torch-{torch.__version__}-{_fingerprint()}"
    library = build / "infermcp_kernels.so"
    try:
        # built before from these very sources, and no build under way (torch's builder holds
        # a lock file while it writes): load it (~10 ms)
        if library.exists() and not (build / "lock").exists():
            torch.ops.load_library(str(library))
        else:  # importing the builder alone takes a second: only when there is a build to do
            _build(build)
    except Exception as exc:  # any failure means: use torch's operations
        log.warning("kernels could not be built or loaded (%s); using torch's operations", exc)
        return False
    return all(hasattr(torch.ops.infermcp, op) for op in OPS)
