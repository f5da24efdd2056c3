"""Hand the memory a CPU training step freed back to the operating system.

glibc keeps freed heap pages mapped. A step frees its activations, and the next step's tensors have other sizes
and do not fit the holes, so the heap grows step after step. `malloc_trim(0)` releases every free page, in
every arena. Trimming after each optimiser step (`train.trim_memory=true`) cut peak RSS by 11-13% in fp32 and
~10% in bf16 (MiniLM and SmolLM2, batch 8), but the next step then faults those pages in again: on a 2-core
AVX512-BF16 machine SmolLM2's loop ran ~14% slower with it, so it is off by default (README, "Training loop and
throughput").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim():
    """libc's malloc_trim, or None where there is none (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Return freed heap pages to the OS (glibc); False where the C library cannot do it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
