"""Choosing the MindSpore device a model runs on."""

import warnings

import mindspore as ms

# The public ms.device_context.<target>.is_available() asks this same question, but logs warnings
# for every absent device: a CPU-only machine would print four on each clip.load.
from mindspore._c_expression import MSContext

DEVICES = ("Ascend", "GPU", "CPU")
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
    return target
