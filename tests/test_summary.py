"""clip.summary: a model's summary against its config and an independent parameter count; the
load progress bar for large files only."""

import json
import math

import numpy as np
import pytest
from helpers import FIXTURES, random_state_dict, write_clip_ckpt
from mindspore.nn.utils import no_init_parameters

import clip
from clip.model import CLIP, model_config
from clip.summary import ModelSummary

with open(FIXTURES / "published_shapes.json") as f:
    PUBLISHED = json.load(f)  # OpenAI's nine architectures: parameter shapes by name


STATISTICS = ("running_mean", "running_var")


def _learnt(shapes: dict, prefix: str = "") -> int:
    """Parameter count as PyTorch's model.parameters() gives it: no BatchNorm statistics."""
    tensors = {k: v for k, v in shapes.items() if isinstance(v, list) and k.startswith(prefix)}
    skipped = (*STATISTICS, "num_batches_tracked")
    return sum(math.prod(v) for k, v in tensors.items() if not k.endswith(skipped))


def _statistics(shapes: dict) -> int:
    return sum(math.prod(v) for k, v in shapes.items() if k.endswith(STATISTICS))


def _rows(model) -> dict[str, str]:
    return dict(model.summary().rows())


@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_published_architectures(name):
    shapes = PUBLISHED[name]
    config = model_config(random_state_dict(shapes))
    with no_init_parameters():  # placeholders: no memory for the weights
        model = CLIP(config)
    summary = model.summary()
    assert isinstance(summary, ModelSummary)
    assert summary.total == _learnt(shapes)
    assert summary.statistics == _statistics(shapes)
    image = _learnt(shapes, "visual.")
    assert summary.parameters["image"] == image
    rows = _rows(model)
    assert rows["parameters"].startswith(f"{_learnt(shapes):,} (image {image:,}")
    assert rows["input resolution"] == f"{config.image_resolution} px"
    assert rows["context length"] == "77 tokens"
    assert rows["vocabulary"] == "49,408 tokens"
    assert rows["embedding dim"] == str(config.embed_dim)
    assert rows["dtype"] == "float32"
    assert rows["activation"] == "QuickGELU (OpenAI's)"
    width = config.transformer_width
    assert rows["text encoder"] == (
        f"Transformer, 12 layers, width {width}, {width // 64} heads, MLP {4 * width}"
    )
    if name == "RN50":
        assert rows["image encoder"] == (
            "ModifiedResNet, stages 3-4-6-3 blocks, width 64, attention pool 32 heads"
        )
        assert "same architecture as" not in rows
    else:
        assert rows["image encoder"] == (
            "ViT, 12 layers, width 768, 12 heads, patch 32 (7x7 grid), MLP 3072"
        )
        assert rows["same architecture as"] == "open_clip 'ViT-B-32-quickgelu'"
        assert "BatchNorm statistics" not in rows
    text = str(summary)
    assert repr(summary) == text and f"{_learnt(shapes):,}" in text and "224 px" in text
    page = model._repr_html_()
    assert page.startswith("<table>") and page.endswith("</table>")
    for field, value in rows.items():
        assert f">{field}</th>" in page and value.replace("'", "&#x27;") in page


def test_demo_model_summary():
    model, _ = clip.load("demo")
    config = model.config
    rows = _rows(model)
    expected = sum(p.asnumpy().size for p in model.get_parameters())  # every one is learnt
    assert model.summary().total == expected
    assert rows["parameters"].startswith(f"{expected:,} (")
    assert rows["image encoder"] == (
        f"ViT, {config.vision_layers} layers, width {config.vision_width}, "
        f"{config.vision_heads} heads, patch {config.vision_patch_size} "
        f"({config.image_resolution // config.vision_patch_size}x"
        f"{config.image_resolution // config.vision_patch_size} grid), "
        f"MLP {config.vision_mlp_width or 4 * config.vision_width}"
    )
    assert rows["text encoder"].startswith(f"Transformer, {config.transformer_layers} layers")
    assert rows["input resolution"] == f"{config.image_resolution} px"
    assert rows["encoders"] == "eager (PyNative)"
    assert f"{expected:,}" in model._repr_html_()


def test_gelu_and_head_width_are_shown():
    import dataclasses

    config = model_config(random_state_dict(PUBLISHED["ViT-B/32"]))
    gelu = dataclasses.replace(config, activation="gelu")
    wide = dataclasses.replace(gelu, transformer_head_width=128)
    with no_init_parameters():
        rows, wide_rows = _rows(CLIP(gelu)), _rows(CLIP(wide))
    assert rows["activation"] == wide_rows["activation"] == "GELU (exact)"
    assert rows["same architecture as"] == "open_clip 'ViT-B-32'"
    assert ", 4 heads, " in wide_rows["text encoder"] and "same architecture as" not in wide_rows


def _small_ckpt(tmp_path):
    weights = dict(np.load(FIXTURES / "tiny_vit_weights.npz"))
    path = tmp_path / "tiny.ckpt"
    write_clip_ckpt(weights, path)
    return path


def test_load_shows_progress_for_large_files_only(tmp_path, capsys, monkeypatch):
    path = _small_ckpt(tmp_path)
    clip.load("demo")
    clip.load(path)
    assert capsys.readouterr().err == ""  # small files: no bar
    clip.load(path, progress=True)
    err = capsys.readouterr().err
    assert "reading tiny.ckpt" in err and "2/2" in err and "loaded tiny.ckpt" in err
    monkeypatch.setattr(clip, "PROGRESS_BYTES", path.stat().st_size)  # as large as the threshold
    clip.load(path)
    assert "loaded tiny.ckpt" in capsys.readouterr().err
    clip.load(path, progress=False)
    assert capsys.readouterr().err == ""
