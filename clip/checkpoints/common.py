"""What every checkpoint reader shares: its error type and the bfloat16 stand-in."""

import numpy as np

# numpy has no bfloat16: readers keep such tensors as their 16-bit patterns in this one-field dtype,
# which reshapes, transposes and concatenates like any other, until read_checkpoint widens them.
BF16 = np.dtype([("bfloat16", "<u2")])


class CheckpointError(ValueError):
    """A file that cannot be read as a checkpoint; the message names the file and the problem."""


def dtype_name(array: np.ndarray) -> str:
    """The stored dtype of an array as a reader returned it ('bfloat16' for BF16)."""
    return "bfloat16" if array.dtype == BF16 else array.dtype.name


def bf16_to_fp32(array: np.ndarray) -> np.ndarray:
    """Widen a BF16 array to float32 exactly (bfloat16 is the top half of a float32)."""
    bits = array["bfloat16"].astype(np.uint32) << np.uint32(16)
    return np.asarray(bits).view(np.float32)
