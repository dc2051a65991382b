"""workbench.features: batched extraction in input order, and the on-disk cache."""

import numpy as np
import pytest
from helpers import FIXTURES, write_clip_ckpt
from mindspore import Tensor
from PIL import Image

import clip
from workbench import features
from workbench.data import ImageDataset


def _images(n: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (40 + 7 * i, 70 - 5 * i, 3), dtype=np.uint8) for i in range(n)]


def _load(path, scale_proj: float = 1.0):
    """The tiny ViT CLIP (vocabulary 1000: images only), its visual.proj scaled."""
    weights = dict(np.load(FIXTURES / "tiny_vit_weights.npz"))
    weights["visual.proj"] = (weights["visual.proj"] * scale_proj).astype(np.float16)
    write_clip_ckpt(weights, path)
    return clip.load(path)


def _count(monkeypatch, model, method: str) -> list:
    calls = []
    original = getattr(model, method)

    def counted(x):
        calls.append(len(x))
        return original(x)

    monkeypatch.setattr(model, method, counted)
    return calls


def test_image_features_keep_order_for_every_kind_of_input(tiny_clip, tmp_path):
    model, preprocess = tiny_clip
    images = _images()
    expected = model.encode_image(Tensor(np.stack([preprocess(i) for i in images]))).asnumpy()
    paths = []
    for i, image in enumerate(images[:2]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    mixed = [paths[0], str(paths[1]), Image.fromarray(images[2]), images[3], images[4]]
    got = features.image_features(model, preprocess, mixed, batch_size=2, progress=False)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    same = [np.stack([i[:40, :40] for i in images]), ImageDataset([i[:40, :40] for i in images],
                                                                  [0] * 5, ["x"])]  # fmt: skip
    direct = model.encode_image(Tensor(np.stack([preprocess(i[:40, :40]) for i in images])))
    for batch in same:
        got = features.image_features(model, preprocess, batch, batch_size=3, progress=False)
        np.testing.assert_allclose(got, direct.asnumpy(), atol=1e-5, rtol=0)
    one = features.image_features(model, preprocess, Image.fromarray(images[2]), progress=False)
    np.testing.assert_allclose(one, expected[2:3], atol=1e-5, rtol=0)
    unit = features.image_features(model, preprocess, mixed, normalize=True, progress=False)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(unit, expected / np.linalg.norm(expected, axis=1, keepdims=True),
                               atol=1e-5)  # fmt: skip


def test_text_features_match_encode_text(tiny_clip):
    model, _ = tiny_clip
    texts = ["a photo of a cat.", "a dog", "a diagram of a red star on the left"]
    expected = model.encode_text(clip.tokenize(texts)).asnumpy()
    got = features.text_features(model, texts, batch_size=2, progress=False)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    single = features.text_features(model, "a dog", progress=False)
    np.testing.assert_allclose(single, expected[1:2], atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="texts must be strings"):
        features.text_features(model, ["a", 3])


def test_cache_hit_is_identical_and_skips_the_model(tiny_clip, tmp_path, monkeypatch):
    model, preprocess = tiny_clip
    images, cache = _images(), tmp_path / "cache"
    calls = _count(monkeypatch, model, "encode_image")
    first = features.image_features(model, preprocess, images, batch_size=2, cache=cache)
    assert calls == [2, 2, 1]
    assert len(list(cache.iterdir())) == 1  # one .npy, no temporary file left
    again = features.image_features(model, preprocess, images, batch_size=4, cache=cache)
    assert calls == [2, 2, 1] and np.array_equal(again, first)
    unit = features.image_features(model, preprocess, images, cache=cache, normalize=True)
    assert len(calls) == 3
    np.testing.assert_array_equal(unit, first / np.linalg.norm(first, axis=1, keepdims=True))
    images[4] = images[4].copy()
    images[4][0, 0, 0] ^= 1  # one bit of one pixel: other content, other entry
    features.image_features(model, preprocess, images, cache=cache)
    assert len(calls) == 4 and len(list(cache.iterdir())) == 2
    text_calls = _count(monkeypatch, model, "encode_text")
    texts = ["a red circle", "a blue star"]
    text = features.text_features(model, texts, cache=cache)
    assert np.array_equal(features.text_features(model, texts, cache=cache), text)
    assert text_calls == [2]


def test_cache_is_keyed_by_file_content_and_preprocess(tiny_clip, tmp_path, monkeypatch):
    model, preprocess = tiny_clip
    cache, image = tmp_path / "cache", _images(1)[0]
    Image.fromarray(image).save(tmp_path / "a.png")
    calls = _count(monkeypatch, model, "encode_image")
    features.image_features(model, preprocess, [tmp_path / "a.png"], cache=cache)
    (tmp_path / "a.png").rename(tmp_path / "b.png")
    features.image_features(model, preprocess, [tmp_path / "b.png"], cache=cache)
    assert len(calls) == 1  # same bytes under another name: a hit
    features.image_features(model, lambda x: preprocess(x), [tmp_path / "b.png"], cache=cache)
    assert len(calls) == 2  # another preprocess: a miss


def test_a_cache_from_another_model_is_never_used(tmp_path, monkeypatch):
    cache, images = tmp_path / "cache", _images(3)
    model_a, preprocess = _load(tmp_path / "a.ckpt")
    twin, _ = _load(tmp_path / "twin.ckpt")  # same weights, another object and file
    model_b, _ = _load(tmp_path / "b.ckpt", scale_proj=2.0)
    assert features.weights_digest(model_a) == features.weights_digest(twin)
    assert features.weights_digest(model_a) != features.weights_digest(model_b)
    a = features.image_features(model_a, preprocess, images, cache=cache, progress=False)
    twin_calls = _count(monkeypatch, twin, "encode_image")
    assert np.array_equal(features.image_features(twin, preprocess, images, cache=cache), a)
    assert twin_calls == []
    b_calls = _count(monkeypatch, model_b, "encode_image")
    b = features.image_features(model_b, preprocess, images, cache=cache, progress=False)
    assert b_calls == [3] and len(list(cache.iterdir())) == 2
    np.testing.assert_allclose(b, 2 * a, rtol=2e-3, atol=1e-5)  # B's own features, not A's


def test_weights_digest_is_memoised_per_model(tiny_clip, monkeypatch):
    model, _ = tiny_clip
    digest = features.weights_digest(model)
    assert len(digest) == 64
    reads, original = [], model.parameters_and_names
    monkeypatch.setattr(model, "parameters_and_names", lambda: reads.append(1) or original())
    assert features.weights_digest(model) == digest and reads == []
    assert features.weights_digest(model, refresh=True) == digest and reads == [1]


def test_damaged_or_failed_cache_entries(tiny_clip, tmp_path, monkeypatch):
    model, preprocess = tiny_clip
    cache, images = tmp_path / "cache", _images(2)
    first = features.image_features(model, preprocess, images, cache=cache, progress=False)
    (entry,) = cache.iterdir()
    entry.write_bytes(entry.read_bytes()[:100])  # truncated: recomputed and rewritten
    again = features.image_features(model, preprocess, images, cache=cache, progress=False)
    np.testing.assert_array_equal(again, first)
    assert np.array_equal(np.load(entry), first)

    def broken(x):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "encode_image", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        features.image_features(model, preprocess, _images(3), cache=cache, progress=False)
    assert list(cache.iterdir()) == [entry]  # nothing half-written


def test_bad_input_is_named(tiny_clip):
    model, preprocess = tiny_clip
    with pytest.raises(ValueError, match="no images given"):
        features.image_features(model, preprocess, [])
    with pytest.raises(TypeError, match="PIL image, an HWC uint8 numpy array or a path"):
        features.image_features(model, preprocess, [3.5], progress=False)
    with pytest.raises(TypeError, match="images must be a list"):
        features.image_features(model, preprocess, 3.5)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        features.image_features(model, preprocess, _images(1), batch_size=0)
    with pytest.raises(FileNotFoundError):
        features.image_features(model, preprocess, ["absent.png"], progress=False)
