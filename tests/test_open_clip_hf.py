"""open_clip and Hugging Face model folders against their own code's outputs (fixtures written by
tests/fixtures/gen_openclip.py with open-clip-torch and transformers)."""

import shutil
import warnings

import numpy as np
import pytest
from helpers import FIXTURES, relative_error, softmax
from mindspore import Tensor

import clip
from clip.checkpoints import read_checkpoint
from clip.config import AssumedConfigWarning

FOLDERS = sorted(
    p for kind in ("open_clip", "hf") for p in (FIXTURES / kind).glob("*") if p.is_dir()
)


def test_every_family_has_its_fixtures():
    names = {f"{p.parent.name}/{p.name}" for p in FOLDERS}
    assert {
        "open_clip/gelu_head_width",
        "open_clip/gelu_mlp_ratio",
        "open_clip/quick_gelu",
    } <= names
    assert {"hf/gelu", "hf/quick_gelu"} <= names


def _assert_reference(model, io) -> None:
    images, tokens = Tensor(io["images"]), Tensor(io["tokens"])
    assert relative_error(model.encode_image(images).asnumpy(), io["image_features"]) <= 1e-4
    assert relative_error(model.encode_text(tokens).asnumpy(), io["text_features"]) <= 1e-4
    probs = softmax(model(images, tokens)[0].asnumpy())
    assert np.abs(probs - io["probs"]).max() <= 1e-5


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_model_folder_loads_to_its_references_numbers(folder):
    io = dict(np.load(folder / "io.npz"))
    model, preprocess = clip.load(folder)
    _assert_reference(model, io)
    assert preprocess.n_px == io["images"].shape[-1]
    weights, *_ = (p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    assert read_checkpoint(weights).config == model.config  # a file in the folder: its config


def test_without_its_config_the_override_restores_the_numbers(tmp_path):
    folder = FIXTURES / "open_clip" / "gelu_head_width"
    io = dict(np.load(folder / "io.npz"))
    weights = next(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    alone = tmp_path / weights.name
    shutil.copy(weights, alone)
    with pytest.warns(AssumedConfigWarning, match="pass config= to clip.load"):
        guessed, _ = clip.load(alone)  # OpenAI's rules: QuickGELU, width // 64 heads
    assert guessed.config.activation == "quick_gelu" and guessed.config.vision_heads == 1
    assert relative_error(guessed.encode_image(Tensor(io["images"])).asnumpy(),
                          io["image_features"]) > 1e-3  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssumedConfigWarning)
        model, _ = clip.load(alone, config=folder / "open_clip_config.json")
    _assert_reference(model, io)


def test_a_width_openais_rule_gives_no_head_asks_for_the_config(tmp_path):
    weights = FIXTURES / "open_clip" / "quick_gelu" / "open_clip_model.safetensors"
    shutil.copy(weights, tmp_path / weights.name)  # text width 32: 32 // 64 = 0 heads
    with pytest.raises(ValueError, match="text width 32 .* gives no attention head; pass"):
        clip.load(tmp_path / weights.name)
    model, _ = clip.load(tmp_path / weights.name, config=weights.parent / "open_clip_config.json")
    _assert_reference(model, dict(np.load(weights.parent / "io.npz")))
