"""CPU kernels of our own, for what torch has no fast kernel for on this class of CPU.

``q4_matmul`` (``q4_matmul.cpp``) multiplies float32 activations by 4-bit weights on AVX2: torch's
own 4-bit CPU kernel (``aten._weight_int4pack_mm_for_cpu``) is vectorized for AVX-512 and ran
a decode step 10x slower than float32 on an AVX2 CPU. The source is compiled on first use by
torch's C++ extension builder (g++ and ninja) into ``$INFERMCP_CACHE_DIR/kernels`` and reused
from there; where it cannot be built or the CPU lacks AVX2 and FMA, :func:`q4_available` says so
and callers use torch's kernel.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from pathlib import Path

import torch

from core.loader import cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("q4_matmul.cpp")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp"]

_lock = threading.Lock()
_loaded: bool | None = None


def cpu_has_avx2() -> bool:
    """Whether this CPU runs AVX2 and FMA instructions (read from /proc/cpuinfo on Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return False
    return "avx2" in flags and "fma" in flags


def q4_available() -> bool:
    """Whether ``torch.ops.infermcp.q4_matmul`` can run here, building it on the first call."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded


def _load() -> bool:
    if not cpu_has_avx2():
        log.info("4-bit kernel: this CPU lacks AVX2/FMA; using torch's")
        return False
    build = cache_dir() / "kernels" / f"torch-{torch.__version__}"
    build.mkdir(parents=True, exist_ok=True)
    # torch's builder looks for ninja on PATH; a virtual environment's own may not be on it
    env_bin = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and env_bin not in os.environ.get("PATH", ""):
        os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")
    try:
        from torch.utils import cpp_extension

        cpp_extension.load(name="infermcp_kernels", sources=[str(SOURCE)], extra_cflags=FLAGS,
                           build_directory=str(build), is_python_module=False, verbose=False)
    except Exception as exc:  # any build failure means: use torch's kernel
        log.warning("4-bit kernel could not be built (%s); using torch's", exc)
        return False
    return hasattr(torch.ops.infermcp, "q4_matmul")
