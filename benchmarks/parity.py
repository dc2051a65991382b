"""Each checkpoint family against its own reference code's outputs, and the exported encoders
against the model that wrote them: max errors, as a Markdown table for the README.

Run: .venv/bin/python benchmarks/parity.py
"""

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def errors(model, io: dict) -> tuple[float, float, float]:
    """Max relative error of image and text features, max abs error of probabilities."""
    from mindspore import Tensor

    images, tokens = Tensor(io["images"]), Tensor(io["tokens"])
    image = model.encode_image(images).asnumpy()
    text = model.encode_text(tokens).asnumpy()
    logits = model(images, tokens)[0].asnumpy().astype(np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)

    def relative(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    return (relative(image, io["image_features"]), relative(text, io["text_features"]),
            float(np.abs(probs - io["probs"]).max()))  # fmt: skip


def main() -> int:
    sys.path.insert(0, str(REPO))
    import mindspore
    import onnxruntime
    from mindspore import Tensor, nn

    import clip
    from clip.export import export
    from clip.model import build_model

    cases = {
        "OpenAI ViT (QuickGELU), .npz of OpenAI's model.py": (FIXTURES / "tiny_vit_weights.npz",
                                                               FIXTURES / "tiny_vit_io.npz"),
        "OpenAI ModifiedResNet, .npz of OpenAI's model.py": (FIXTURES / "tiny_resnet_weights.npz",
                                                             FIXTURES / "tiny_resnet_io.npz"),
        "OpenAI TorchScript .pt": (FIXTURES / "checkpoints" / "openai_jit.pt",
                                   FIXTURES / "checkpoints" / "io.npz"),
        "open_clip: exact GELU, head width 32 (not 64), mean/std 0.5":
            (FIXTURES / "open_clip" / "gelu_head_width", None),
        "open_clip: exact GELU, MLP ratio 2.5 / 3.0":
            (FIXTURES / "open_clip" / "gelu_mlp_ratio", None),
        "open_clip: QuickGELU": (FIXTURES / "open_clip" / "quick_gelu", None),
        "Hugging Face CLIPModel: gelu, head dim 16, MLP 100 / 80": (FIXTURES / "hf" / "gelu", None),
        "Hugging Face CLIPModel: quick_gelu, .bin": (FIXTURES / "hf" / "quick_gelu", None),
    }  # fmt: skip
    print("| checkpoint | vs | image features | text features | probabilities |")
    print("|---|---|---|---|---|")
    for name, (source, io) in cases.items():
        io = dict(np.load(io or source / "io.npz"))
        if source.suffix == ".npz":
            model = build_model(dict(np.load(source)))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = clip.load(source)[0]
        reference = "open_clip 3.3.0" if "open_clip" in name else "OpenAI's code"
        reference = "transformers 5.24.0" if "Hugging" in name else reference
        image, text, probs = errors(model, io)
        print(f"| {name} | {reference} | {image:.1e} | {text:.1e} | {probs:.1e} |")

    model = clip.load("demo")[0]
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (4, 3, 64, 64)).astype(np.float32)
    tokens = clip.tokenize(["a photo of a red circle."] * 2 + ["a blue star", "a cat"]).asnumpy()
    expected = (model.encode_image(Tensor(images)).asnumpy(),
                model.encode_text(Tensor(tokens)).asnumpy())  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        export(model, Path(tmp) / "demo", "onnx", batch=4)
        export(model, Path(tmp) / "demo", "mindir")
        got = {}
        for part, array in (("image", images), ("text", tokens.astype(np.int32))):
            session = onnxruntime.InferenceSession(str(Path(tmp) / f"demo_{part}.onnx"))
            got[("ONNX, onnxruntime", part)] = session.run(None, {part: array})[0]
            graph = nn.GraphCell(mindspore.load(str(Path(tmp) / f"demo_{part}.mindir")))
            got[("MindIR, nn.GraphCell", part)] = graph(Tensor(array)).asnumpy()
    for how in ("ONNX, onnxruntime", "MindIR, nn.GraphCell"):
        errs = [np.abs(got[(how, p)] - e).max() / np.abs(e).max()
                for p, e in zip(("image", "text"), expected, strict=True)]  # fmt: skip
        print(
            f"| demo model exported, {how} | clip.load's model | {errs[0]:.1e} | {errs[1]:.1e} | |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
