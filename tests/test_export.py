"""Export of the encoders (MindIR, ONNX) against the model that wrote them."""

import mindspore as ms
import numpy as np
import onnxruntime
import pytest
from helpers import FIXTURES, relative_error
from mindspore import Tensor, nn

import clip
from clip.__main__ import main
from clip.export import export
from clip.model import build_model


@pytest.fixture(scope="module")
def demo():
    return clip.load("demo")[0]


def _inputs(model, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    side = model.visual.input_resolution
    images = rng.normal(0, 1, (n, 3, side, side)).astype(np.float32)
    texts = [f"a photo of a {word}." for word in ("red circle", "blue star", "cat", "dog")][:n]
    return images, clip.tokenize(texts, context_length=model.context_length).asnumpy()


def _onnx(path, array: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: array})[0]


def _tiny(name: str):
    return build_model(dict(np.load(FIXTURES / f"tiny_{name}_weights.npz")))


@pytest.mark.parametrize("which", ["demo", "resnet", "gelu"])
def test_onnx_run_by_onnxruntime_gives_the_models_features(demo, which, tmp_path):
    if which == "demo":
        model = demo
    elif which == "resnet":
        model = _tiny("resnet")
    else:  # exact GELU, head width 32: an open_clip model
        model = clip.load(FIXTURES / "open_clip" / "gelu_head_width")[0]
    images, tokens = _inputs(model, 2)
    if which != "demo":  # tiny vocabularies: ids below it, eot the largest
        tokens = np.minimum(tokens, model.vocab_size - 2)
        tokens[:, -1], tokens[:, 0] = 0, model.vocab_size - 2
        tokens[:, 5] = model.vocab_size - 1
    before = model.encode_image(Tensor(images)).asnumpy()
    written = export(model, tmp_path / "m", "onnx", batch=2)
    assert [p.name for p, _ in written] == ["m_image.onnx", "m_text.onnx"]
    image = _onnx(tmp_path / "m_image.onnx", images)
    text = _onnx(tmp_path / "m_text.onnx", tokens.astype(np.int32))
    assert relative_error(image, before) <= 1e-4
    assert relative_error(text, model.encode_text(Tensor(tokens)).asnumpy()) <= 1e-4
    np.testing.assert_array_equal(model.encode_image(Tensor(images)).asnumpy(), before)


def test_mindir_loads_back_with_a_dynamic_batch(demo, tmp_path):
    export(demo, tmp_path / "demo.mindir", "mindir", part="image")
    graph = nn.GraphCell(ms.load(str(tmp_path / "demo.mindir")))
    for n in (1, 3):
        images, _ = _inputs(demo, n, seed=n)
        expected = demo.encode_image(Tensor(images)).asnumpy()
        assert relative_error(graph(Tensor(images)).asnumpy(), expected) <= 1e-4
    export(demo, tmp_path / "demo", "mindir", part="text")
    graph = nn.GraphCell(ms.load(str(tmp_path / "demo.mindir")))
    _, tokens = _inputs(demo, 3)
    expected = demo.encode_text(Tensor(tokens)).asnumpy()
    assert relative_error(graph(Tensor(tokens)).asnumpy(), expected) <= 1e-4


def test_export_command_and_its_errors(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["export", "demo", str(out), "--format", "onnx", "--batch", "1", "--part", "image"])
        == 0
    )
    assert capsys.readouterr().out.startswith(f"wrote {out}.onnx (")
    assert (tmp_path / "demo.onnx").stat().st_size > 0
    assert main(["export", "demo", str(out), "--format", "onnx"]) == 1
    assert "ONNX export needs a fixed batch" in capsys.readouterr().err
    assert main(["export", "demo", str(out), "--batch", "0"]) == 1
    assert "--batch must be positive" in capsys.readouterr().err
