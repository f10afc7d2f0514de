"""CPU memory allocator tuning for the processes swinkit's commands run.

PyTorch's CPU tensors come from the C library's malloc. glibc serves every block above 32 MB (and, with its
adaptive threshold, many above 128 KB) with a fresh mmap and returns it on free, so each large activation,
gradient or temporary is page-faulted and zeroed by the kernel again on every step. Keeping freed memory in the
heap for reuse avoids that (the effect PyTorch's CPU tuning guide gets by preloading jemalloc or tcmalloc):
Swin-T training steps ran 1.07-1.09x faster on a 2-core machine (benchmarks/allocator.py). The process's
resident memory then stays near its peak instead of falling between steps. Commands apply it unless
SWINKIT_ALLOCATOR=system; library users call `tune_cpu_allocator()`.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
ENV = "SWINKIT_ALLOCATOR"


def tune_cpu_allocator() -> bool:
    """Serve large blocks from the heap and keep freed memory for reuse (glibc only; affects the whole
    process and the workers it forks from now on). Returns whether the allocator was changed."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    # mmap stays the fallback when the heap cannot grow; the heap's free top goes back to the system only
    # above 2 GB (the largest value mallopt's int takes)
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


def tune_unless_disabled() -> bool:
    """tune_cpu_allocator() unless the environment says SWINKIT_ALLOCATOR=system."""
    choice = os.environ.get(ENV, "tuned")
    if choice not in ("tuned", "system"):
        raise ValueError(f"{ENV} must be 'tuned' or 'system', got {choice!r}")
    return choice == "tuned" and tune_cpu_allocator()
