"""The public API: clip.available_models, clip.load, devices, jit, and the seed's README example."""

import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from helpers import ASSETS, FIXTURES, random_state_dict, run_isolated, softmax, write_clip_ckpt
from mindspore import Tensor

import clip
from clip.checkpoints import write_ckpt
from clip.transform import Preprocess

NINE = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64"]
NINE += ["ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """The tiny ViT's weights as a canonical-name MindSpore .ckpt, and OpenAI's outputs."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    write_clip_ckpt(dict(np.load(FIXTURES / "tiny_vit_weights.npz")), path)
    return path, dict(np.load(FIXTURES / "tiny_vit_io.npz"))


def test_available_models_are_openais_nine():
    assert clip.available_models() == NINE


def test_load_ckpt_matches_openai(tiny_ckpt):
    path, io = tiny_ckpt
    model, preprocess = clip.load(path)
    assert isinstance(preprocess, Preprocess) and preprocess.n_px == 64
    logits_per_image, _ = model(Tensor(io["images"]), Tensor(io["tokens"]))
    assert np.abs(softmax(logits_per_image.asnumpy()) - io["probs"]).max() <= 1e-5


def test_load_with_jit_matches_openai(tiny_ckpt):
    path, io = tiny_ckpt
    model, _ = clip.load(str(path), jit=True)
    logits_per_image, _ = model(Tensor(io["images"]), Tensor(io["tokens"]))
    assert np.abs(softmax(logits_per_image.asnumpy()) - io["probs"]).max() <= 1e-5


@pytest.mark.parametrize("device", ["Ascend", "cuda", "GPU:1", "npu"])
def test_absent_device_warns_then_runs_on_cpu(tiny_ckpt, device):
    with pytest.warns(UserWarning, match=f"device '{device}' is not present here; running on CPU"):
        model, _ = clip.load(tiny_ckpt[0], device=device)
    assert model.encode_image(tiny_ckpt[1]["images"]).shape == (3, 32)


def test_default_and_cpu_device_do_not_warn(tiny_ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip.load(tiny_ckpt[0])
        clip.load(tiny_ckpt[0], device="cpu")


def test_unknown_device_is_refused(tiny_ckpt):
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        clip.load(tiny_ckpt[0], device="tpu")


def test_unknown_model_name_lists_the_available_ones():
    with pytest.raises(RuntimeError, match=r"Model ViT-H/14 not found; available models = \["):
        clip.load("ViT-H/14")


def test_load_names_the_file_of_a_state_dict_that_is_not_clip(tmp_path):
    path = tmp_path / "resnet.ckpt"
    write_ckpt({"fc.weight": np.zeros((2, 2), np.float32)}, path)
    with pytest.raises(ValueError, match=r"resnet\.ckpt: not a CLIP state dict: missing"):
        clip.load(path)


def test_import_changes_no_global_mindspore_state():
    script = (
        "import mindspore as ms\n"
        "keys = ['mode', 'device_target', 'device_id', 'max_call_depth']\n"
        "before = [ms.get_context(k) for k in keys]\n"
        "import clip\n"
        "assert [ms.get_context(k) for k in keys] == before, before\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)


@pytest.fixture(scope="module")
def vit_b_32_ckpt(tmp_path_factory):
    """A full-size ViT-B/32 with random weights, as ./ViT-B-32.ckpt beside CLIP.png."""
    folder = tmp_path_factory.mktemp("seed")
    with open(FIXTURES / "published_shapes.json") as f:
        shapes = __import__("json").load(f)["ViT-B/32"]
    weights = random_state_dict(shapes, np.random.default_rng(0))
    write_clip_ckpt(weights, folder / "ViT-B-32.ckpt", fp16=True)
    shutil.copy(ASSETS / "CLIP.png", folder / "CLIP.png")
    return folder


def test_seed_readme_example_runs_as_written(vit_b_32_ckpt, monkeypatch):
    monkeypatch.chdir(vit_b_32_ckpt)
    from mindspore import nn
    from PIL import Image

    with pytest.warns(UserWarning, match="'Ascend' is not present"):
        model, preprocess = clip.load("./ViT-B-32.ckpt", device="Ascend")
    image = Tensor(preprocess(Image.open("CLIP.png")))
    text = clip.tokenize(["a diagram", "a dog", "a cat"])
    logits_per_image, logits_per_text = model(image, text)
    probs = nn.Softmax(axis=-1)(logits_per_image).numpy()

    assert model.visual.input_resolution == 224 and preprocess.n_px == 224
    assert image.shape == (3, 224, 224)
    assert text.shape == (3, 77)
    assert probs.shape == (1, 3) and np.isfinite(probs).all()
    assert abs(probs.sum() - 1) < 1e-6
    np.testing.assert_array_equal(logits_per_text.numpy(), logits_per_image.numpy().T)
    assert model.encode_image(image).shape == (1, 512)


def test_load_of_an_unreadable_file_names_it_once(tmp_path):
    from clip.checkpoints import CheckpointError

    path = tmp_path / "notes.txt"
    path.write_text("not weights\n")
    with pytest.raises(CheckpointError) as error:
        clip.load(path)
    assert str(error.value).count(str(path)) == 1
    assert "is a text file" in str(error.value)


def _run(script: str) -> None:
    result = run_isolated(script)
    assert result.returncode == 0, result.stderr[-2000:]


THREADS_CONFIGURED = (
    "from mindspore.device_context.cpu.op_tuning import RuntimeConf\n"
    "configured = RuntimeConf.get_instance().is_op_threads_num_configured\n"
)


def test_cpu_kernels_get_one_task_per_core_at_load_not_at_import():
    _run(
        THREADS_CONFIGURED + "import os\n"
        "os.sched_getaffinity = lambda pid: {0, 1}\n"
        "import clip\n"
        "assert not configured()\n"
        "from clip.device import select_device\n"
        "assert select_device('CPU') == 'CPU' and configured()\n"
    )


def test_cpu_kernel_tasks_are_left_to_a_user_who_set_them_or_to_many_cores():
    _run(
        THREADS_CONFIGURED + "import mindspore as ms\n"
        "ms.device_context.cpu.op_tuning.threads_num(1)\n"
        "from clip.device import match_kernel_threads_to_cores\n"
        "assert not match_kernel_threads_to_cores()\n"  # would raise if it set the count again
    )
    _run(
        THREADS_CONFIGURED + "import os\n"
        "os.sched_getaffinity = lambda pid: set(range(64))\n"
        "from clip.device import match_kernel_threads_to_cores\n"
        "assert not match_kernel_threads_to_cores() and not configured()\n"
    )
