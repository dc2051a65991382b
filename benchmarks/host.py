"""The host a benchmark ran on: CPU model, the ISA flags that decide kernel speed, versions."""

import platform
import sys
from importlib import metadata

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu() -> dict:
    """CPU model (with its family and model numbers, which tell one generation from another
    when a virtual machine names only "AMD EPYC"), ISA_FLAGS it has, and the cores it may use."""
    from clip.device import cpu_info, usable_cores

    fields = cpu_info()
    model = fields.get("model name") or platform.processor() or "unknown"
    flags = set(fields.get("flags", "").split())
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']} model {fields.get('model', '?')})"
    return {
        "cpu": model,
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
        "cores": usable_cores(),
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
