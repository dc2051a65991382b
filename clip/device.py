"""Choosing the MindSpore device a model runs on."""

import os
import platform
import warnings
from pathlib import Path

import mindspore as ms

# The public ms.device_context.<target>.is_available() asks this same question, but logs warnings
# for every absent device: a CPU-only machine would print four on each clip.load.
from mindspore._c_expression import MSContext

DEVICES = ("Ascend", "GPU", "CPU")
CPUINFO = Path("/proc/cpuinfo")
DEFAULT_KERNEL_THREADS = 25  # MindSpore's own count of parallel tasks per CPU kernel
_ALIASES = {"ascend": "Ascend", "npu": "Ascend", "gpu": "GPU", "cuda": "GPU", "cpu": "CPU"}


def is_present(target: str) -> bool:
    """Whether this MindSpore build can run on the device target (asked quietly)."""
    return target == "CPU" or MSContext.get_instance().is_pkg_support_device(target)


def select_device(device: str | None = None) -> str:
    """Make the requested device (or the best present one) MindSpore's target; return its name."""
    if device is None:
        target = next(name for name in DEVICES if is_present(name))
    else:
        target = _ALIASES.get(str(device).split(":")[0].lower())
        if target is None:
            raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)} or None")
        if not is_present(target):
            warnings.warn(f"device {device!r} is not present here; running on CPU", stacklevel=3)
            target = "CPU"
    if ms.get_context("device_target") != target:
        ms.set_device(target)
    if target == "CPU":
        # Without it MindSpore's launch threads spin on a core the kernels need.
        ms.runtime.launch_blocking()
        match_kernel_threads_to_cores()
    return target


def usable_cores() -> int:
    """The number of CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):  # a container or taskset may allow fewer than exist
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def match_kernel_threads_to_cores() -> bool:
    """Split CPU kernels into as many parallel tasks as this process has cores, where that is
    fewer than MindSpore's default of 25 and no count was set; whether it was set now."""
    # Each op's tasks beyond the cores only queue, and the many small ops of a ResNet pay that
    # overhead per call (README, "Memory and kernels"). MindSpore reads the count at its first
    # kernel: set later, it changes nothing, and it can be set only once per process.
    runtime = ms.device_context.cpu.op_tuning.RuntimeConf.get_instance()
    cores = usable_cores()
    if runtime.is_op_threads_num_configured() or cores >= DEFAULT_KERNEL_THREADS:
        return False
    ms.device_context.cpu.op_tuning.threads_num(cores)
    return True


def prefer_avx2_convolutions() -> bool:
    """Cap oneDNN at AVX2 for this process on an AVX-512 x86 CPU, unless an ISA was chosen
    (ONEDNN_MAX_CPU_ISA or DNNL_MAX_CPU_ISA); whether the cap is now asked for."""
    # MindSpore 2.10's oneDNN runs NCHW 3x3 convolutions with its reference kernel where it may
    # use AVX-512, and with a JIT kernel under the AVX2 cap (README, "Memory and kernels"). The
    # cap costs large matmuls some speed, so only ResNets ask for it, and it only takes effect
    # before the process's first oneDNN kernel: Conv2d's kernel choice times what it gets.
    chosen = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA"))
    if chosen is not None:
        return chosen.upper() == "AVX2"
    if platform.machine().lower() not in ("x86_64", "amd64") or not _has_avx512():
        return False
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    return True


def cpu_info() -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo ("model name", "cpu family", "flags", ...); empty
    where there is no such file."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _has_avx512() -> bool:
    return "avx512f" in cpu_info().get("flags", "").split()
