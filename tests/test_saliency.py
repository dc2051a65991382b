"""workbench.saliency: each method's numbers against hand computations, gradients against finite
differences, shapes for several patch grids, mapping back to the original image, the pointing
game."""

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from mindspore import Tensor, ops
from PIL import Image

import clip
from clip.model import CLIP, CLIPConfig
from clip.transform import transform
from workbench import saliency
from workbench.demo import shapes

matplotlib.use("Agg")
DEMO = Path(__file__).resolve().parents[1] / "clip" / "weights" / "demo.ckpt"


def random_clip(resolution: int = 64, patch: int | None = 8, seed: int = 0) -> CLIP:
    """A random CLIP with OpenAI's vocabulary: a ViT (patch given), else a small ResNet."""
    vision = dict(vision_layers=2, vision_width=128, vision_patch_size=patch)
    if patch is None:
        vision = dict(vision_layers=(1, 1, 1, 1), vision_width=8, vision_patch_size=None)
    model = CLIP(CLIPConfig(32, resolution, **vision, context_length=77, vocab_size=49408,
                            transformer_width=64, transformer_layers=2))  # fmt: skip
    rng = np.random.default_rng(seed)
    for name, param in model.parameters_and_names():
        shape = param.shape
        if name == "logit_scale":
            value = np.log(100.0)
        elif len(shape) == 1 and name.endswith(("weight", "running_var")):  # norms' scales
            value = 1 + rng.uniform(0, 0.1, shape)
        elif len(shape) == 1:
            value = rng.normal(0, 0.1, shape)
        else:
            fan_in = shape[0] if name.endswith(("proj", "projection")) else np.prod(shape[1:])
            value = rng.normal(0, fan_in**-0.5, shape)
        param.set_data(Tensor(np.asarray(value, np.float32)))
    if patch is None:  # the sign that gives this random ResNet positive logits, so Grad-CAM > 0
        model.text_projection.set_data(-model.text_projection.value())
    return model


@pytest.fixture(scope="module")
def vit() -> CLIP:
    return random_clip(64, 8)


@pytest.fixture(scope="module")
def resnet() -> CLIP:
    return random_clip(64, None)


def _image(seed: int = 0, size=(64, 64)) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return transform(64)(pixels)


def _grid(heatmap_patches: np.ndarray, n: int = 64) -> np.ndarray:
    """The (n, n) map saliency makes of a (g, g) patch grid."""
    return saliency._upsample(heatmap_patches, (n, n))


def test_upsample_is_torchs_bilinear_with_half_pixel_centres():
    expected = [
        [0, 0.25, 0.75, 1],
        [0.5, 0.75, 1.25, 1.5],
        [1.5, 1.75, 2.25, 2.5],
        [2, 2.25, 2.75, 3],
    ]
    np.testing.assert_allclose(saliency._upsample(np.array([[0.0, 1], [2, 3]]), (4, 4)), expected)


def test_rollout_of_uniform_attention_is_uniform(vit):
    model = random_clip(64, 8)
    for block in model.visual.transformer.resblocks:  # q = k = 0: every attention row is uniform
        weight = block.attn.in_proj_weight.asnumpy()
        weight[: 2 * 128] = 0
        block.attn.in_proj_weight.set_data(Tensor(weight))
        bias = block.attn.in_proj_bias.asnumpy()
        bias[: 2 * 128] = 0
        block.attn.in_proj_bias.set_data(Tensor(bias))
    heatmap = saliency.rollout(model, _image())
    # one layer: 0.5 * 1/65 per patch; two layers: the class row of (0.5 U + 0.5 I)^2
    assert heatmap.shape == (64, 64)
    np.testing.assert_allclose(heatmap, 0.75 / 65, rtol=1e-5)
    assert not np.allclose(saliency.rollout(vit, _image()), 0.75 / 65, rtol=1e-3)


def _fake_trace(monkeypatch, model, probs: list[np.ndarray]) -> None:
    transformer = model.visual.transformer
    original = transformer.trace

    def trace(x, mask=None, offsets=None):
        out, inputs, _ = original(x, mask, offsets)
        return out, inputs, [Tensor(p[None].astype(np.float32)) for p in probs]

    monkeypatch.setattr(transformer, "trace", trace)


def test_rollout_multiplies_residual_averaged_attention_from_the_first_layer(vit, monkeypatch):
    tokens = 65
    first, second = np.eye(tokens), np.eye(tokens)
    first[0] = 0
    first[0, 1 + 3] = 1  # layer 1: the class token attends to patch 3 only
    second[1 + 3] = 0
    second[1 + 3, 1 + 5] = 1  # layer 2: patch 3 attends to patch 5 only
    probs = [np.stack([first, first]), np.stack([second, np.eye(tokens)])]  # 2 heads
    _fake_trace(monkeypatch, vit, probs)
    expected = np.zeros(64)
    expected[3] = 0.5  # class row of (0.5 I + 0.5 A2) (0.5 I + 0.5 A1); A2 is a head mean
    np.testing.assert_allclose(saliency.rollout(vit, _image()), _grid(expected.reshape(8, 8)))
    # from layer 2 on, the class token keeps itself: nothing on the patches
    np.testing.assert_allclose(saliency.rollout(vit, _image(), start_layer=1), 0, atol=1e-12)
    _fake_trace(monkeypatch, vit, [np.stack([np.eye(tokens)] * 2)] * 2)
    np.testing.assert_allclose(saliency.rollout(vit, _image()), 0)  # identity attention


def _pair_logit(model, image: np.ndarray, tokens: np.ndarray, offsets: list) -> float:
    """The image-text logit with offsets added to the attention probabilities, from model parts."""
    visual = model.visual
    split = len(visual.transformer.resblocks)
    out = visual.transformer.trace(visual.embed(Tensor(image[None])), offsets=offsets[:split])[0]
    image = ops.matmul(visual.ln_post(out[:, 0]), visual.proj).asnumpy()[0].astype(np.float64)
    eot = Tensor(tokens.argmax(-1).astype(np.int32))
    text = model.trace_tokens(Tensor(tokens), eot, offsets[split:])[0].asnumpy()[0]
    cosine = image @ text / np.linalg.norm(image) / np.linalg.norm(text)
    return float(np.exp(model.logit_scale.asnumpy()) * cosine)


def test_attention_gradients_equal_finite_differences(vit, attention):
    image = _image(1)
    tokens = saliency._tokens(vit, "a photo of a red circle", 1)
    image_probs, image_grads, text_probs, text_grads = saliency._gradients(
        vit, Tensor(image[None]), tokens
    )
    probs, grads = image_probs + text_probs, image_grads + text_grads
    zeros = [np.zeros(p.shape, np.float32) for p in probs]
    eps = 1e-2
    checked = 0
    # image blocks 0-1 (2 heads, 65 tokens), then text blocks 2-3 (1 head, 8 tokens)
    picks = [(0, (0, 1, 0, 9)), (1, (0, 0, 0, 40)), (1, (0, 1, 7, 0)), (2, (0, 0, 7, 3))]
    for layer, index in picks + [(3, (0, 0, 7, 7))]:
        bumped = []
        for sign in (1, -1):
            offsets = [Tensor(z) for z in zeros]
            shifted = zeros[layer].copy()
            shifted[index] = sign * eps
            offsets[layer] = Tensor(shifted)
            bumped.append(_pair_logit(vit, image, tokens, offsets))
        estimate = (bumped[0] - bumped[1]) / (2 * eps)
        assert grads[layer][index] == pytest.approx(estimate, rel=2e-2, abs=2e-3)
        checked += abs(estimate) > 1e-2
    assert checked >= 3  # the checked gradients are not all (near) zero
    assert _pair_logit(vit, image, tokens, [Tensor(z) for z in zeros]) == pytest.approx(
        float(vit(image, Tensor(tokens))[0].asnumpy()[0, 0]), rel=1e-5
    )


def test_chefer_relevance_follows_its_update_rule(vit):
    image = _image(2)
    text = "a photo of a red circle"
    tokens = saliency._tokens(vit, text, 1)
    probs, grads, text_probs, text_grads = saliency._gradients(vit, Tensor(image[None]), tokens)
    relevance = np.eye(65)
    for p, g in zip(probs, grads, strict=True):  # start layer 0: every block
        relevance = relevance + np.maximum(p[0] * g[0], 0).mean(0) @ relevance
    np.testing.assert_allclose(
        saliency.chefer(vit, image, text, start_layer=0), _grid(relevance[0, 1:].reshape(8, 8)),
        rtol=1e-5, atol=1e-9,
    )  # fmt: skip
    last = np.maximum(probs[-1][0] * grads[-1][0], 0).mean(0)[0, 1:]  # default: last block only
    np.testing.assert_allclose(saliency.chefer(vit, image, text), _grid(last.reshape(8, 8)),
                               rtol=1e-5, atol=1e-9)  # fmt: skip
    heatmap, words, scores = saliency.relevance(vit, image, text)
    np.testing.assert_allclose(heatmap, saliency.chefer(vit, image, text), rtol=1e-5, atol=1e-9)
    assert words == ["a", "photo", "of", "a", "red", "circle"]
    eot = int(tokens[0].argmax())
    text_relevance = np.eye(tokens.shape[1])
    for p, g in zip(text_probs, text_grads, strict=True):  # text default: every block
        text_relevance = text_relevance + np.maximum(p[0] * g[0], 0).mean(0) @ text_relevance
    row = text_relevance[eot, 1:eot]
    np.testing.assert_allclose(scores, row / row.sum(), rtol=1e-5)
    assert scores.sum() == pytest.approx(1) and (scores >= 0).all()
    words_again, text_scores = saliency.text_relevance(vit, image, text)
    assert words_again == words
    np.testing.assert_allclose(text_scores, scores, rtol=1e-6)
    last = np.maximum(text_probs[-1][0] * text_grads[-1][0], 0).mean(0)[eot, 1:eot]
    np.testing.assert_allclose(saliency.text_relevance(vit, image, text, -1)[1],
                               last / last.sum(), rtol=1e-5)  # fmt: skip


def _layer_norm(x, cell) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-5) * cell.weight.asnumpy() + (
        cell.bias.asnumpy()
    )


def test_maskclip_is_the_value_path_of_the_last_block(vit, resnet):
    image = _image(3)
    text = "a photo of a blue square"
    text_feature = vit.encode_text(clip.tokenize([text])).asnumpy()[0]
    visual = vit.visual
    tokens = visual.transformer.trace(visual.embed(Tensor(image[None])))[1][-1].asnumpy()[0]
    block = visual.transformer.resblocks[-1]
    w = 128
    values = _layer_norm(tokens[1:], block.ln_1) @ block.attn.in_proj_weight.asnumpy()[2 * w :].T
    values += block.attn.in_proj_bias.asnumpy()[2 * w :]
    out = values @ block.attn.out_proj.weight.asnumpy().T + block.attn.out_proj.bias.asnumpy()
    dense = _layer_norm(out, visual.ln_post) @ visual.proj.asnumpy()
    cosine = dense @ text_feature / np.linalg.norm(dense, axis=-1) / np.linalg.norm(text_feature)
    got = saliency.maskclip(vit, image, text)
    np.testing.assert_allclose(got, _grid(cosine.reshape(8, 8)), rtol=1e-4, atol=1e-5)
    assert -1 <= got.min() < got.max() <= 1

    pool = resnet.visual.attnpool
    x = resnet.visual.stages(Tensor(image[None])).asnumpy()[0].reshape(256, -1).T
    values = x @ pool.v_proj.weight.asnumpy().T + pool.v_proj.bias.asnumpy()
    dense = values @ pool.c_proj.weight.asnumpy().T + pool.c_proj.bias.asnumpy()
    text_feature = resnet.encode_text(clip.tokenize([text])).asnumpy()[0]
    cosine = dense @ text_feature / np.linalg.norm(dense, axis=-1) / np.linalg.norm(text_feature)
    np.testing.assert_allclose(saliency.maskclip(resnet, image, text),
                               _grid(cosine.reshape(2, 2)), rtol=1e-4, atol=1e-5)  # fmt: skip


def test_gradcam_weights_are_finite_difference_channel_gradients():
    resnet = random_clip(64, None)
    image, text = _image(4), "a photo of a green star"
    text_feature = resnet.encode_text(clip.tokenize([text])).asnumpy()[0].astype(np.float64)
    scale = float(np.exp(resnet.logit_scale.asnumpy()))
    activations = resnet.visual.stages(Tensor(image[None])).asnumpy()

    def logit(a: np.ndarray) -> float:
        feature = resnet.visual.attnpool(Tensor(a)).asnumpy()[0].astype(np.float64)
        return (
            scale * feature @ text_feature / np.linalg.norm(feature) / np.linalg.norm(text_feature)
        )

    eps, weights = 1e-2, []
    for channel in range(activations.shape[1]):  # d logit / d (shift of channel) = h*w * weight
        shift = np.zeros_like(activations)
        shift[:, channel] = eps
        weights.append((logit(activations + shift) - logit(activations - shift)) / (2 * eps) / 4)
    cam = np.maximum(np.tensordot(np.array(weights), activations[0], axes=1), 0)
    got = saliency.gradcam(resnet, image, text)
    assert cam.max() > 0
    np.testing.assert_allclose(got, _grid(cam), rtol=2e-2, atol=2e-2 * cam.max())


def test_attention_pool_map_of_uniform_attention(resnet):
    model = random_clip(64, None)
    pool = model.visual.attnpool
    for dense in (pool.q_proj, pool.k_proj):
        dense.weight.set_data(ops.zeros_like(dense.weight))
        dense.bias.set_data(ops.zeros_like(dense.bias))
    np.testing.assert_allclose(saliency.attnpool(model, _image()), 1 / 5, rtol=1e-6)
    assert saliency.attnpool(resnet, _image()).std() > 0


@pytest.mark.parametrize(
    "resolution,patch,grid",
    [(224, 32, 7), (224, 16, 14), (224, 14, 16), (64, 8, 8), (224, None, 7)],
    ids=["B/32 7x7", "B/16 14x14", "L/14 16x16", "demo 8x8", "ResNet 7x7"],
)
def test_heatmaps_for_every_patch_grid(resolution, patch, grid):
    model = random_clip(resolution, patch, seed=1)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, resolution, resolution, 3), dtype=np.uint8)
    images = np.stack([transform(resolution)(p) for p in pixels])
    step = resolution // grid
    after = np.arange(grid) * step + step // 2  # the first pixel after each patch centre
    for method in saliency.available_methods(model):
        one = saliency.heatmap(model, images[0], "a red circle", method)
        batch = saliency.heatmap(model, images, ["a red circle", "a blue star"], method)
        assert one.shape == (resolution, resolution) and one.dtype == np.float32
        assert batch.shape == (2, resolution, resolution) and np.isfinite(batch).all()
        assert one.std() > 0
        scale = np.abs(one).max()
        np.testing.assert_allclose(batch[0], one, rtol=1e-4, atol=1e-5 * scale)
        # the map is the bilinear upsampling of a grid x grid map: rebuilt from its patch centres,
        # extrapolated from the two pixels after each (the map is linear between centres)
        rows = 1.5 * one[after] - 0.5 * one[after + 1]
        patches = 1.5 * rows[:, after] - 0.5 * rows[:, after + 1]
        np.testing.assert_allclose(one, _grid(patches, resolution), rtol=1e-5, atol=1e-6 * scale)


def test_maps_go_back_to_the_original_image():
    width, height = 200, 100
    original = np.tile(np.linspace(0, 255, width), (height, 1)).astype(np.uint8)
    preprocessed = transform(64)(np.stack([original] * 3, axis=-1))
    heatmap = preprocessed[0] * saliency.STD[0] + saliency.MEAN[0]  # back in [0, 1]
    mapped = saliency.to_original(heatmap, (width, height))
    assert mapped.shape == (height, width)
    assert np.isnan(mapped[:, :50]).all() and np.isnan(mapped[:, 150:]).all()
    assert np.isfinite(mapped[:, 50:150]).all()
    np.testing.assert_allclose(mapped[:, 52:148], original[:, 52:148] / 255, atol=0.02)
    square = saliency.to_original(np.ones((64, 64)), (64, 64))
    np.testing.assert_array_equal(square, 1)


def test_overlay_titles_and_colourbar(vit):
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (80, 100, 3), np.uint8))
    heatmap = saliency.heatmap(vit, transform(64)(image), "a red circle", "maskclip")
    ax = saliency.overlay(image, heatmap, title="maskclip: 'a red circle'",
                          label=saliency.UNITS["maskclip"]).axes[0]  # fmt: skip
    assert ax.get_title() == "maskclip: 'a red circle'"
    assert ax.figure.axes[1].get_ylabel() == "cosine similarity"
    shown = ax.get_images()[1].get_array()
    assert shown.shape == (80, 100) and np.ma.getmaskarray(shown)[:, :10].all()
    ax = saliency.overlay(transform(64)(image), heatmap).axes[0]
    assert ax.get_images()[0].get_array().shape == (64, 64, 3)


def test_bad_input_is_named(vit, resnet):
    with pytest.raises(ValueError, match="needs a ResNet image encoder; for a ViT use one of"):
        saliency.gradcam(vit, _image(), "a cat")
    with pytest.raises(ValueError, match="needs a ViT image encoder; for a ResNet use one of"):
        saliency.chefer(resnet, _image(), "a cat")
    with pytest.raises(ValueError, match="does not fit this model"):
        saliency.heatmap(resnet, _image(), "a cat", "rollout")
    with pytest.raises(ValueError, match=r"\(3, 64, 64\)"):
        saliency.chefer(vit, np.zeros((3, 32, 32), np.float32), "a cat")
    with pytest.raises(TypeError, match="preprocess"):
        saliency.maskclip(vit, Image.new("RGB", (64, 64)), "a cat")
    with pytest.raises(ValueError, match="one per image"):
        saliency.maskclip(vit, np.stack([_image()] * 2), ["a cat"])
    with pytest.raises(ValueError, match="needs a text"):
        saliency.heatmap(vit, _image(), None, "chefer")
    with pytest.raises(ValueError, match="layer must be in"):
        saliency.chefer(vit, _image(), "a cat", start_layer=2)


def test_pointing_game_counts_hits_against_the_area_baseline(vit, monkeypatch):
    samples = shapes.generate("test", 6, 0, objects=2)
    named = [s.masks[i % 2] for i, s in enumerate(samples)]

    calls = []

    def oracle(model, images, texts, method, layer):  # peaks inside the named object
        calls.append((method, layer, list(texts)))
        start = len(images) * sum(call[0] == method for call in calls[:-1])
        maps = np.stack([m.astype(np.float32) for m in named[start : start + len(images)]])
        return maps if method == "maskclip" else -maps

    monkeypatch.setattr(saliency, "heatmap", oracle)
    result = saliency.pointing_game(vit, transform(64), ["maskclip", "rollout"], n=6, batch_size=3,
                                    layers={"rollout": 1})  # fmt: skip
    assert result["maskclip"] == 1.0 and result["rollout"] == 0.0
    assert [(m, layer) for m, layer, _ in calls] == [("maskclip", None), ("rollout", 1)] * 2
    named_object = samples[1].labels[1]
    assert calls[0][2][1] == f"a photo of a {named_object.colour} {named_object.shape}."
    assert result["baseline"] == pytest.approx(np.mean([m.mean() for m in named]))


@pytest.fixture(scope="module")
def demo():
    return clip.load("demo")


def test_text_relevance_default_gives_every_caption_word_relevance(demo):
    model, preprocess = demo
    image = preprocess(shapes.sample("test", 2, 0, objects=2).image)
    captions = [shapes.with_articles(f"a photo of a {c}.") for c in shapes.COMBOS[::4]][:10]
    assert len(captions) == 10
    for caption in captions:  # the last block alone leaves some of these all zero
        words, scores = saliency.text_relevance(model, image, caption)
        assert len(words) == len(scores) and (scores >= 0).all()
        assert scores.sum() == pytest.approx(1), caption


def _resized(mask: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize((side, side), Image.Resampling.NEAREST))


@pytest.mark.parametrize("resolution,patch", [(32, 8), (96, 16)])
def test_pointing_game_at_other_resolutions(resolution, patch, monkeypatch):
    model = random_clip(resolution, patch)
    samples = shapes.generate("test", 4, 0, objects=2)
    masks = [_resized(s.masks[i % 2], resolution) for i, s in enumerate(samples)]
    result = saliency.pointing_game(model, transform(resolution), n=4, batch_size=2)
    assert set(result) == {*saliency.VIT_METHODS, "baseline"}
    assert all(0 <= v <= 1 for v in result.values())
    assert result["baseline"] == pytest.approx(np.mean(masks))
    area = np.mean([s.masks[i % 2].mean() for i, s in enumerate(samples)])
    assert result["baseline"] == pytest.approx(area, rel=0.15)  # nearest resizing keeps the area

    starts = iter(range(0, 4, 2))

    def oracle(model, images, texts, method, layer):  # peaks inside the resized named object
        assert images.shape[-2:] == (resolution, resolution)
        start = next(starts)
        return np.stack([m.astype(np.float32) for m in masks[start : start + len(images)]])

    monkeypatch.setattr(saliency, "heatmap", oracle)
    hits = saliency.pointing_game(model, transform(resolution), ["maskclip"], n=4, batch_size=2)
    assert hits["maskclip"] == 1.0


def test_pointing_game_hits_only_a_peak_on_the_named_object(vit, monkeypatch):
    samples = shapes.generate("test", 6, 0, objects=2)

    def peak_on(mask: np.ndarray) -> np.ndarray:  # a map whose one maximum is inside mask
        rows, columns = np.nonzero(mask)
        heat = np.zeros(mask.shape, np.float32)
        heat[rows[len(rows) // 2], columns[len(rows) // 2]] = 1.0
        return heat

    # sample i names object i % 2: peak on it for samples 0-2, on the other object for 3-5
    maps = [peak_on(s.masks[i % 2] if i < 3 else s.masks[1 - i % 2] & ~s.masks[i % 2])
            for i, s in enumerate(samples)]  # fmt: skip
    batches = iter([maps[:2], maps[2:4], maps[4:]])
    monkeypatch.setattr(saliency, "heatmap", lambda *args: np.stack(next(batches)))
    result = saliency.pointing_game(vit, transform(64), ["chefer"], n=6, batch_size=2)
    assert result["chefer"] == 0.5


def test_demo_model_points_at_the_named_object(demo):
    result = saliency.pointing_game(*demo, n=200, layers={"chefer": 0, "rollout": 0})
    baseline = result.pop("baseline")
    assert result["chefer"] >= 0.70, result  # issue 6's target for the best method
    assert min(result.values()) > 2.5 * baseline, result  # MaskCLIP, the weakest: 23.0% vs 7.7%
