"""Preprocessing against OpenAI's torchvision pipeline (fixtures/gen_preprocess.py)."""

import io
import json
import pickle
from pathlib import Path

import mindspore.dataset as ds
import mindspore.dataset.vision as vision
import numpy as np
import PIL
import pytest
from PIL import Image

from clip.transform import MEAN, STD, Preprocess, center_crop, transform

REPO = Path(__file__).resolve().parents[1]
FIXTURE = np.load(REPO / "tests" / "fixtures" / "preprocess.npz")
CASES = json.loads(str(FIXTURE["meta"]))
VERSIONS = json.loads(str(FIXTURE["versions"]))


def fixture_input(i: int):
    """The i-th fixture's input, rebuilt as the generator handed it to torchvision."""
    case = CASES[i]
    if case["kind"] == "file":
        return Image.open(REPO / case["path"])
    if case["kind"] == "array":
        return FIXTURE[f"in{i}"][:, ::2] if case["strided"] else FIXTURE[f"in{i}"]
    image = Image.frombytes(case["mode"], tuple(case["size"]), FIXTURE[f"in{i}"].tobytes())
    if case["mode"] == "P":
        image.putpalette(FIXTURE[f"palette{i}"].tobytes())
    return image


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c["name"] for c in CASES])
def test_matches_torchvision(i):
    n, expected = CASES[i]["n"], FIXTURE[f"out{i}"]
    out = transform(n)(fixture_input(i))
    assert out.shape == (3, n, n) and out.dtype == np.float32 and out.flags.c_contiguous
    err = np.abs(out - expected).max()
    assert err <= 1e-6, f"max abs error {err} (fixture: {VERSIONS}, here Pillow {PIL.__version__})"


@pytest.mark.parametrize("name", ["RGBA 45x37", "P 45x37", "1 500x4", "RGBA 3x400"])
def test_fixtures_see_the_order_of_convert_and_resize(name):
    i = next(i for i, c in enumerate(CASES) if c["name"] == name)
    converted_first = transform(CASES[i]["n"])(fixture_input(i).convert("RGB"))
    assert np.abs(converted_first - FIXTURE[f"out{i}"]).max() > 1e-2


def test_fixture_covers_modes_and_arrays():
    modes = {c["mode"] for c in CASES if c["kind"] == "pil"}
    assert {"RGB", "RGBA", "LA", "L", "P", "CMYK", "1", "I", "I;16", "F"} <= modes
    shapes = {FIXTURE[f"in{i}"].shape[2:] for i, c in enumerate(CASES) if c["kind"] == "array"}
    assert {(), (1,), (2,), (3,), (4,)} <= shapes


def test_array_goes_through_pillow():
    rng = np.random.RandomState(0)
    for shape, mode in [((9, 13, 3), "RGB"), ((9, 13, 4), "RGBA"), ((9, 13), "L")]:
        array = rng.randint(0, 256, shape, dtype=np.uint8)
        expected = transform(8)(Image.frombytes(mode, (13, 9), array.tobytes()))
        np.testing.assert_array_equal(transform(8)(array), expected)
    np.testing.assert_array_equal(transform(8)(array[..., None]), transform(8)(array))


def test_dataset_map_and_batch():
    rng = np.random.RandomState(1)
    sizes = [(40, 30), (17, 64), (32, 32)]
    images = [rng.randint(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    preprocess = transform(16)
    data = ds.GeneratorDataset([(im,) for im in images], ["image"], shuffle=False)
    data = data.map(preprocess, input_columns=["image"]).batch(100)
    batches = [b["image"] for b in data.create_dict_iterator(output_numpy=True)]
    assert len(batches) == 1 and batches[0].shape == (3, 3, 16, 16)
    assert batches[0].dtype == np.float32
    np.testing.assert_array_equal(batches[0], np.stack([preprocess(im) for im in images]))


def test_dataset_decode_then_map():
    rng = np.random.RandomState(2)
    pngs = []
    for h, w in [(21, 34), (50, 19)]:
        buffer = io.BytesIO()
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, "PNG")
        pngs.append(buffer.getvalue())
    preprocess = transform(16)
    encoded = [(np.frombuffer(p, np.uint8),) for p in pngs]
    data = ds.GeneratorDataset(encoded, ["image"], shuffle=False)
    data = data.map(vision.Decode(), ["image"]).map(preprocess, ["image"]).batch(100)
    (batch,) = [b["image"] for b in data.create_dict_iterator(output_numpy=True)]
    expected = np.stack([preprocess(Image.open(io.BytesIO(p))) for p in pngs])
    np.testing.assert_array_equal(batch, expected)


def test_preprocess_object():
    preprocess = transform(np.int64(224))
    assert isinstance(preprocess, Preprocess) and type(preprocess.n_px) is int
    assert preprocess.n_px == 224
    assert "n_px=224" in repr(preprocess) and "bicubic" in repr(preprocess)
    assert pickle.loads(pickle.dumps(preprocess)).n_px == 224


@pytest.mark.parametrize("n_px", [0, -3, 2.5, "224", True, None])
def test_bad_n_px(n_px):
    with pytest.raises(ValueError, match="positive integer"):
        transform(n_px)


@pytest.mark.parametrize(
    "image, error, match",
    [
        (np.zeros((8, 8, 3), np.float32), TypeError, "uint8.*PIL image"),
        (np.zeros((8, 8), np.int64), TypeError, "dtype int64"),
        (np.zeros((3, 8, 8), np.uint8), ValueError, r"HWC.*\(3, 8, 8\)"),
        (np.zeros((8, 8, 5), np.uint8), ValueError, r"HWC.*\(8, 8, 5\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), ValueError, r"HWC.*\(2, 8, 8, 3\)"),
        (np.zeros(8, np.uint8), ValueError, r"HWC.*\(8,\)"),
        ([[0, 1], [2, 3]], TypeError, "PIL.Image.Image or a uint8 numpy array.*list"),
        ("cat.jpg", TypeError, "PIL.Image.Image or a uint8 numpy array.*str"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "empty image of size 8x0"),
        (Image.new("RGB", (5, 0)), ValueError, "empty image of size 5x0"),
    ],
)
def test_bad_images(image, error, match):
    with pytest.raises(error, match=match):
        transform(8)(image)


@pytest.mark.parametrize(
    "size,n,resized,box",
    [
        ((640, 480), 224, (298, 224), (37, 0, 261, 224)),  # landscape: width int(224 * 4 / 3)
        ((375, 500), 224, (224, 298), (0, 37, 224, 261)),  # portrait
        ((300, 301), 64, (64, 64), (0, 0, 64, 64)),  # long side int(64 * 301 / 300) = 64
        ((225, 224), 224, (225, 224), (0, 0, 224, 224)),  # round((225 - 224) / 2) = 0
    ],
)
def test_center_crop_geometry(size, n, resized, box):
    assert center_crop(size, n) == (resized, box)
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if resized != size:
        image = image.resize(resized, Image.Resampling.BICUBIC)
    crop = np.asarray(image.crop(box), np.float32).transpose(2, 0, 1) / 255
    expected = (crop - np.reshape(MEAN, (3, 1, 1))) / np.reshape(STD, (3, 1, 1))
    np.testing.assert_allclose(Preprocess(n)(pixels), expected, atol=1e-6)
