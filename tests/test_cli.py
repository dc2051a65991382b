"""`python -m clip predict`, `python -m clip convert` and `python -m clip info`."""

import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy
from helpers import FIXTURES, softmax
from mindspore import Tensor
from PIL import Image

import clip
from clip.__main__ import main
from clip.checkpoints import read_checkpoint, write_ckpt
from clip.hub import SHIPPED
from workbench.demo import shapes

CHECKPOINTS = FIXTURES / "checkpoints"
CANONICAL = dict(np.load(CHECKPOINTS / "canonical.npz"))


def assert_canonical(path, dtype: str) -> None:
    checkpoint = read_checkpoint(path)
    assert (checkpoint.format, checkpoint.naming) == ("mindspore-ckpt", "OpenAI")
    assert checkpoint.dtypes == {dtype: len(CANONICAL)}
    assert sorted(checkpoint.state_dict) == sorted(CANONICAL)
    assert all(np.array_equal(checkpoint.state_dict[k], v) for k, v in CANONICAL.items())


@pytest.mark.parametrize("source", ["openai_jit.pt", "legacy.pt", "hf_model.safetensors"])
def test_convert_writes_a_canonical_ckpt(tmp_path, capsys, source):
    dst = tmp_path / "model.ckpt"
    assert main(["convert", str(CHECKPOINTS / source), str(dst)]) == 0
    kept = "with its config" if source == "openai_jit.pt" else "no config"  # OpenAI: its rules
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {dst}: {len(CANONICAL)} tensors, stored dtypes, {kept}")
    assert_canonical(dst, "float16")
    assert (read_checkpoint(dst).config is None) == (source != "openai_jit.pt")


def test_convert_keeps_a_folders_config(tmp_path):
    folder = FIXTURES / "open_clip" / "gelu_head_width"
    assert main(["convert", str(folder), str(tmp_path / "m.ckpt")]) == 0
    stored = read_checkpoint(tmp_path / "m.ckpt").config
    assert stored == read_checkpoint(folder).config and stored.activation == "gelu"
    assert main(["convert", str(CHECKPOINTS / "legacy.pt"), str(tmp_path / "g.ckpt"),
                 "--config", str(folder / "open_clip_config.json")]) == 1  # fmt: skip


@pytest.mark.parametrize("fp16", [False, True])
def test_convert_keeps_float32_unless_asked_for_fp16(tmp_path, fp16):
    src = tmp_path / "fp32.safetensors"
    safetensors.numpy.save_file({k: v.astype(np.float32) for k, v in CANONICAL.items()}, src)
    assert main(["convert", str(src), str(tmp_path / "out.ckpt")] + ["--fp16"] * fp16) == 0
    assert_canonical(tmp_path / "out.ckpt", "float16" if fp16 else "float32")


def test_convert_refuses_what_is_not_a_clip(tmp_path, capsys):
    dst = tmp_path / "model.ckpt"
    assert main(["convert", str(CHECKPOINTS / "bf16.pt"), str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {CHECKPOINTS / 'bf16.pt'}: not a CLIP state dict: missing ")
    assert not dst.exists()


def test_info_describes_the_checkpoint(capsys):
    assert main(["info", str(CHECKPOINTS / "openai_jit.pt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    params = sum(v.size for v in CANONICAL.values())
    assert lines[1:] == [
        "format: TorchScript archive (OpenAI .pt), OpenAI names",
        "vision: ViT, width 64, layers 1, heads 1, patch 8",
        "text: transformer, width 64, layers 1, heads 1",
        "embed dim: 32",
        "resolution: 24 px",
        "context length: 32, vocabulary: 64",
        "activation: quick_gelu",
        f"parameters: {params:,} in {len(CANONICAL)} tensors",
        f"dtypes: float16 ({len(CANONICAL)} tensors)",
    ]


def test_info_on_a_resnet_and_on_a_partial_file(capsys, tmp_path):
    write_ckpt(dict(np.load(FIXTURES / "tiny_resnet_weights.npz")), tmp_path / "rn.ckpt")
    assert main(["info", str(tmp_path / "rn.ckpt")]) == 0
    assert "vision: ResNet, width 8, layers (1, 2, 1, 1), heads 4" in capsys.readouterr().out
    assert main(["info", str(CHECKPOINTS / "bf16.pt")]) == 0
    out = capsys.readouterr().out
    assert "architecture: not a CLIP state dict: missing positional_embedding" in out
    assert "dtypes: bfloat16 (5 tensors)" in out


def test_bad_input_is_one_line_on_stderr(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello\n")
    assert main(["info", str(tmp_path / "notes.txt")]) == 1
    captured = capsys.readouterr()
    message = f"{tmp_path / 'notes.txt'}: is a text file ('hello'...), not a checkpoint"
    assert captured.err == f"error: {message}\n"


def test_module_entry_point():
    def run(*args):
        command = [sys.executable, "-m", "clip", *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=FIXTURES.parents[1])

    done = run("info", str(CHECKPOINTS / "legacy.pt"))
    assert done.returncode == 0 and "format: torch.save legacy pickle, OpenAI names" in done.stdout
    done = run()
    assert done.returncode == 2 and "{predict,convert,info,export}" in done.stderr


@pytest.fixture(scope="module")
def shape_image(tmp_path_factory):
    """A test-split shapes image of one object saved as PNG, and that object's label."""
    sample = shapes.generate("test", 1, 0, objects=1)[0]
    path = tmp_path_factory.mktemp("predict") / "shape.png"
    Image.fromarray(sample.image).save(path)
    return path, sample.labels[0]


def printed_probabilities(out: str) -> dict[str, float]:
    """{label: percent} from predict's output lines."""
    rows = [line.rsplit(maxsplit=1) for line in out.splitlines()]
    return {label.strip(): float(percent.rstrip("%")) for label, percent in rows}


def test_predict_prints_the_demo_models_probabilities(shape_image, capsys):
    path, label = shape_image
    assert main(["predict", str(path), "--labels", ",".join(list(shapes.SHAPES))]) == 0
    printed = printed_probabilities(capsys.readouterr().out)
    model, preprocess = clip.load("demo")
    image = Tensor(preprocess(Image.open(path))[None])
    texts = clip.tokenize([f"a photo of a {name}." for name in list(shapes.SHAPES)])
    expected = 100 * softmax(model(image, texts)[0].asnumpy().astype(np.float64))[0]
    assert list(printed) == [list(shapes.SHAPES)[i] for i in np.argsort(-expected, kind="stable")]
    assert np.allclose(list(printed.values()), np.sort(expected)[::-1], atol=0.051)
    assert next(iter(printed)) == label.shape


def test_predict_takes_a_model_path_and_a_template(shape_image, capsys):
    path, label = shape_image
    args = ["predict", str(path), "--labels", f"{label.colour},black", "--template", "a {} shape"]
    assert main([*args, "--model", str(SHIPPED["demo"])]) == 0
    printed = printed_probabilities(capsys.readouterr().out)
    assert list(printed) == [label.colour, "black"]
    assert printed[label.colour] > 50 and abs(sum(printed.values()) - 100) < 0.15


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--labels", "a dog"], "--labels needs at least two comma-separated labels"),
        (["--labels", "a,b", "--template", "a photo"], "--template must contain {}"),
        (["--labels", "a,b", "--model", "ViT-Z/1"], "Model ViT-Z/1 not found"),
        (["--labels", "a," + "dog " * 80], "too long for context length 77"),
    ],
)
def test_predict_bad_arguments_are_one_line_errors(shape_image, capsys, args, problem):
    assert main(["predict", str(shape_image[0]), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and problem in err and err.count("\n") == 1


def test_predict_unreadable_image(tmp_path, capsys):
    (tmp_path / "photo.png").write_text("not a png")
    assert main(["predict", str(tmp_path / "photo.png"), "--labels", "a,b"]) == 1
    assert capsys.readouterr().err.startswith(f"error: cannot read image {tmp_path / 'photo.png'}")
