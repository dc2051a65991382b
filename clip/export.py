"""The encoders as standalone graphs (MindIR or ONNX) written by mindspore.export."""

import contextlib
import stat
import time
from pathlib import Path

import mindspore as ms
from mindspore import Tensor, nn, ops

from . import model as clip_model

FORMATS = {"mindir": "MINDIR", "onnx": "ONNX"}


class ImageEncoder(nn.Cell):
    """Preprocessed images (N, 3, n_px, n_px) float32 -> features (N, embed_dim), not normalised."""

    def __init__(self, model: clip_model.CLIP):
        super().__init__()
        self.visual = model.visual

    def construct(self, image):
        return self.visual(image)


class TextEncoder(nn.Cell):
    """Token ids (N, context_length) int32 -> features (N, embed_dim), pooled at each row's eot
    token: its largest id (argmax, as OpenAI's)."""

    def __init__(self, model: clip_model.CLIP):
        super().__init__()
        self.model = model
        self.argmax = ops.Argmax(axis=-1, output_type=ms.int32)  # ops.argmax's int64 breaks ORT

    def construct(self, text):
        return self.model.encode_tokens(text, self.argmax(text))


@contextlib.contextmanager
def _exporting():
    """clip.model.EXPORT on while graphs compile: they read it then."""
    clip_model.EXPORT = True
    try:
        yield
    finally:
        clip_model.EXPORT = False


def export(
    model: clip_model.CLIP,
    out: str | Path,
    fmt: str = "mindir",
    part: str = "both",
    batch: int | None = None,
) -> list[tuple[Path, float]]:
    """Write the encoders to OUT.<fmt> (one part) or OUT_image.<fmt> and OUT_text.<fmt> (both):
    [(path, seconds)]. batch None: a dynamic batch axis (MindIR only; ONNX needs a fixed N)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    if batch is None and fmt == "onnx":
        raise ValueError(
            "ONNX export needs a fixed batch: MindSpore exports no dynamic shapes to ONNX; "
            "pass --batch N"
        )
    if part not in ("image", "text", "both"):
        raise ValueError(f"part must be image, text or both, got {part!r}")
    if batch is not None and batch < 1:
        raise ValueError(f"--batch must be positive, got {batch}")
    model.set_train(False)
    n_px = model.visual.input_resolution
    specs = {
        "image": (ImageEncoder, [batch, 3, n_px, n_px], ms.float32),
        "text": (TextEncoder, [batch, model.context_length], ms.int32),
    }
    out = Path(out)
    out = out.with_suffix("") if out.suffix.lower() in (".mindir", ".onnx") else out
    written = []
    for name in ("image", "text") if part == "both" else (part,):
        wrapper, shape, dtype = specs[name]
        stem = out.with_name(f"{out.name}_{name}") if part == "both" else out
        path = stem.with_name(f"{stem.name}.{fmt}")
        path.unlink(missing_ok=True)  # mindspore.export writes its files read-only (0o400)
        folder = path.parent.resolve()
        folder.mkdir(parents=True, exist_ok=True)
        mode = stat.S_IMODE(folder.stat().st_mode)
        cell = wrapper(model)
        cell.set_train(False)
        start = time.perf_counter()
        with _exporting():
            ms.export(
                cell,
                Tensor(shape=shape, dtype=dtype),
                file_name=str(folder / stem.name),
                file_format=FORMATS[fmt],
            )
        folder.chmod(mode)  # ONNX export sets its folder to 0o700
        path.chmod(0o644)
        written.append((path, time.perf_counter() - start))
    return written
