"""The host a benchmark ran on: CPU model, the ISA flags that decide kernel speed, versions."""

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu() -> dict:
    """CPU model (with its family and model numbers, which tell one generation from another
    when a virtual machine names only "AMD EPYC"), ISA_FLAGS it has, and the cores it may use."""
    model, flags, numbers = platform.processor() or "unknown", set(), {}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            elif key.strip() in ("cpu family", "model"):
                numbers.setdefault(key.strip(), value.strip())
    if numbers:
        model += f" (family {numbers.get('cpu family', '?')} model {numbers.get('model', '?')})"
    return {
        "cpu": model,
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
    }


def versions(*packages: str) -> dict:
    """Installed versions of `packages` (absent ones as None), with Python's."""
    found = {"python": sys.version.split()[0]}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def describe(*packages: str) -> str:
    """One line for a benchmark's header: CPU, ISA flags, cores, library versions."""
    host = cpu()
    listed = ", ".join(f"{k} {v}" for k, v in versions(*packages).items() if v)
    isa = " ".join(host["isa"]) or "no AVX2"
    return f"host: {host['cpu']}, {isa}, {host['cores']} cores; {listed}"


if __name__ == "__main__":
    print(describe("mindspore", "numpy", "faiss-cpu", "ray"))
