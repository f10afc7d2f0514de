"""What this CPU is and which of the instruction sets that change swinkit's numerics or speed it has (read from
/proc/cpuinfo; imports nothing heavy, so the torch-free `predict --onnx` path can use it)."""
from __future__ import annotations

import functools
import os
import platform

# the x86 flags that decide which kernels oneDNN and onnxruntime pick: int8 dot products (VNNI; without it the u8 x s8
# instruction adds pairs of products in int16 and saturates), bf16 in hardware, and the vector width
FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in /proc/cpuinfo; (platform's name, no flags) elsewhere."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
                if "model name" in info and "flags" in info:
                    break
    except OSError:
        pass
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = frozenset(info.get("flags", "").split())
    return name, flags


def cpu_name() -> str:
    """The CPU's model name and core count, e.g. "AMD EPYC, 2 cores"."""
    return f"{_cpuinfo()[0]}, {os.cpu_count()} cores"


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (empty where /proc/cpuinfo is not readable)."""
    return _cpuinfo()[1]


def has_int8_dot() -> bool:
    """Whether the CPU adds u8 x s8 products in int32 (AVX-512 VNNI, AVX-VNNI or AMX), so that 8-bit weights
    cannot saturate onnxruntime's int8 kernels."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX); elsewhere oneDNN emulates it."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def describe() -> str:
    """One line: the CPU's name and which of FEATURES it has, e.g.
    "AMD EPYC, 2 cores (x86_64: avx2 fma; no avx512f avx512_vnni avx_vnni avx512_bf16 amx_bf16 amx_int8)"."""
    flags = cpu_flags()
    if not flags:
        return f"{cpu_name()} ({platform.machine()}: features unknown)"
    have = [f for f in FEATURES if f in flags]
    lack = [f for f in FEATURES if f not in flags]
    return (f"{cpu_name()} ({platform.machine()}: {' '.join(have) or 'none of ' + ' '.join(FEATURES)}"
            + (f"; no {' '.join(lack)})" if have and lack else ")"))
