"""workbench.widgets without a browser: set widget values, fire handlers, check state and output."""

import datetime
import io

import matplotlib
import numpy as np
import pytest
from helpers import FIXTURES, softmax, write_clip_ckpt
from mindspore import Tensor
from PIL import Image

import clip
from workbench import data, prompts, saliency, widgets
from workbench.features import image_features, l2_normalize

matplotlib.use("Agg")
SHAPES = ["circle", "square", "triangle", "star", "cross"]


@pytest.fixture(scope="module")
def labelled():
    return data.shapes_dataset("test", 12)


@pytest.fixture
def lab(tiny_clip, labelled):
    model, preprocess = tiny_clip
    return widgets.PromptLab(model, preprocess, templates=["a photo of a {}.", "a {} shape"],
                             labelled=labelled)  # fmt: skip


def _texts(model, texts) -> np.ndarray:
    """Unit text features straight from the text encoder."""
    return l2_normalize(model.encode_text(clip.tokenize(texts)).asnumpy().astype(np.float64))


def _weights(model, classes, templates) -> np.ndarray:
    """OpenAI's template ensemble written out; a class may be a list of synonyms."""
    rows = []
    for c in classes:
        names = [c] if isinstance(c, str) else c
        per_template = [_texts(model, [t.format(s) for s in names]).mean(0) for t in templates]
        rows.append(l2_normalize(np.mean(per_template, axis=0)))
    return np.stack(rows)


def _features(model, preprocess, images) -> np.ndarray:
    """Unit image features straight from the image encoder."""
    pixels = np.stack([preprocess(image) for image in images])
    return l2_normalize(model.encode_image(Tensor(pixels)).asnumpy().astype(np.float64))


def _expected(model, preprocess, classes, templates, images) -> np.ndarray:
    """Zero-shot probabilities of images over classes with templates, from the encoders."""
    scale = np.exp(float(model.logit_scale.asnumpy()))
    weights = _weights(model, classes, templates)
    return softmax(scale * _features(model, preprocess, images) @ weights.T)


def test_prompt_lab_starts_on_the_labelled_set(lab, labelled, tiny_clip):
    assert lab.classes == SHAPES == labelled.classes
    assert lab.class_box.value == "\n".join(SHAPES)
    expected = _expected(*tiny_clip, SHAPES, lab.templates, [labelled[0][0]])[0]
    np.testing.assert_allclose(lab.probs, expected, rtol=1e-4)
    assert bytes(lab.picture.value).startswith(b"\x89PNG")
    assert "application/vnd.jupyter.widget-view+json" in lab._repr_mimebundle_()


def test_class_name_change_updates_the_bars(lab, labelled, tiny_clip):
    lab.class_box.value = "circle\nsquare\nhexagon\n"
    assert lab.classes == ["circle", "square", "hexagon"] and lab.error is None
    expected = _expected(*tiny_clip, lab.classes, lab.templates, [labelled[0][0]])[0]
    np.testing.assert_allclose(lab.probs, expected, rtol=1e-4)
    bars = {row.children[0].value: row.children[1].value for row in lab.bars.children}
    assert bars == pytest.approx(dict(zip(lab.classes, lab.probs, strict=True)))
    values = [row.children[1].value for row in lab.bars.children]
    assert values == sorted(values, reverse=True)
    for t, template in enumerate(lab.templates):
        alone = _expected(*tiny_clip, lab.classes, [template], [labelled[0][0]])[0]
        np.testing.assert_allclose(lab.template_probs[t], alone, rtol=1e-4)
    assert "hexagon" in lab.breakdown.value and "a {} shape" in lab.breakdown.value
    cached = len(lab._texts)
    lab.class_box.value = "circle\nsquare\noctagon"  # one new name: two new prompts encoded
    assert len(lab._texts) == cached + 2


def test_a_class_line_may_list_synonyms(lab, labelled, tiny_clip):
    lab.class_box.value = "circle / ring\nsquare\ntriangle\nstar\ncross"
    assert lab.classes[0] == "circle / ring" and lab.error is None
    classes = [["circle", "ring"], *SHAPES[1:]]
    expected = _expected(*tiny_clip, classes, lab.templates, [labelled[0][0]])[0]
    np.testing.assert_allclose(lab.probs, expected, rtol=1e-4)
    assert "circle / ring" in [row.children[0].value for row in lab.bars.children]
    lab.evaluate()
    weights = _weights(tiny_clip[0], classes, lab.templates)
    truth = (_features(*tiny_clip, labelled.images) @ weights.T).argmax(1)
    assert lab.accuracy == pytest.approx(np.mean(truth == labelled.labels))
    lab.class_box.value = "F/A-18\nsquare"  # unspaced: one name
    expected = _expected(*tiny_clip, ["F/A-18", "square"], lab.templates, [labelled[0][0]])[0]
    np.testing.assert_allclose(lab.probs, expected, rtol=1e-4)
    given = widgets.PromptLab(*tiny_clip, classes=[["circle", "ring"], "square"],
                              templates=lab.templates, gallery=labelled)  # fmt: skip
    assert given.class_box.value == "circle / ring\nsquare"
    expected = _expected(*tiny_clip, [["circle", "ring"], "square"], lab.templates,
                         [labelled[0][0]])[0]  # fmt: skip
    np.testing.assert_allclose(given.probs, expected, rtol=1e-4)


def test_templates_from_a_library_and_typed(lab):
    lab.library.value = "CIFAR10"
    assert lab.templates == prompts.templates("CIFAR10")
    assert lab.template_probs.shape == (len(prompts.templates("CIFAR10")), 5)
    lab.template_box.value = "a drawing of a {}"
    assert lab.templates == ["a drawing of a {}"] and lab.template_probs.shape == (1, 5)
    lab.template_box.value = "a {} next to a {}"
    assert "exactly one '{}'" in lab.error and "exactly one" in lab.message.value
    lab.class_box.value = ""
    assert "at least one class name" in lab.error
    lab.class_box.value = "circle\nsquare"
    lab.template_box.value = "a {} " + "very " * 80
    assert "too long for context length 77" in lab.error
    lab.template_box.value = "a {}"
    assert lab.error is None and lab.message.value == ""


def _upload(name: str, content: bytes) -> dict:
    """A FileUpload value entry as the browser sends it."""
    return dict(name=name, type="", size=len(content), content=memoryview(content),
                last_modified=datetime.datetime.now())  # fmt: skip


def test_gallery_and_upload_change_the_image(lab, labelled, tiny_clip):
    lab.picker.value = 3
    expected = _expected(*tiny_clip, SHAPES, lab.templates, [labelled[3][0]])[0]
    np.testing.assert_allclose(lab.probs, expected, rtol=1e-4)
    picture = Image.fromarray(np.full((30, 50, 3), (220, 40, 40), np.uint8))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    content = buffer.getvalue()
    lab.upload.value = (_upload("red.png", content),)
    assert lab.image.size == (50, 30)
    expected = _expected(*tiny_clip, SHAPES, lab.templates, [np.asarray(picture)])[0]
    np.testing.assert_allclose(lab.probs, expected, rtol=1e-4)
    lab.upload.value = (_upload("notes.txt", b"abc"),)
    assert "not an image" in lab.error
    other = Image.fromarray(np.full((30, 50, 3), (40, 80, 220), np.uint8))
    buffer = io.BytesIO()
    other.save(buffer, format="PNG")
    lab.upload.value = (_upload("red.png", buffer.getvalue()),)  # same name, other content
    expected = _expected(*tiny_clip, SHAPES, lab.templates, [np.asarray(other)])[0]
    np.testing.assert_allclose(lab.probs, expected, rtol=1e-4)


def test_one_click_evaluation(lab, labelled, tiny_clip):
    lab.evaluate_button.click()
    features = _features(*tiny_clip, labelled.images)

    def accuracy(templates):
        predicted = (features @ _weights(tiny_clip[0], SHAPES, templates).T).argmax(1)
        return np.mean(predicted == labelled.labels)

    assert lab.accuracy == pytest.approx(accuracy(lab.templates))
    assert lab.template_accuracy == pytest.approx({t: accuracy([t]) for t in lab.templates})
    assert f"{lab.accuracy:.1%}" in lab.result.value
    lab.class_box.value = "circle\nsquare"
    lab.evaluate_button.click()
    assert "has 5 classes" in lab.error


def test_saliency_explorer(tiny_clip, labelled):
    model, preprocess = tiny_clip
    explorer = widgets.SaliencyExplorer(model, preprocess, labelled, "a photo of a red circle")
    assert explorer.method.value == "chefer" and explorer.layer.value == -1
    pixels = preprocess(labelled[0][0])
    expected = saliency.chefer(model, pixels, explorer.text.value)
    np.testing.assert_allclose(explorer.heatmap, expected, rtol=1e-5)
    words, scores = explorer.tokens
    assert words == ["a", "photo", "of", "a", "red", "circle"] and scores.sum() == pytest.approx(1)
    assert (
        bytes(explorer.view.value).startswith(b"\x89PNG") and "circle" in explorer.token_view.value
    )
    assert explorer.figure.axes[1].get_ylabel() == saliency.UNITS["chefer"]
    explorer.method.value = "rollout"
    assert explorer.layer.value == 0 and not explorer.layer.disabled and explorer.tokens is None
    np.testing.assert_allclose(explorer.heatmap, saliency.rollout(model, pixels), rtol=1e-5)
    explorer.method.value = "maskclip"
    assert explorer.layer.disabled
    explorer.picker.value = 2
    explorer.text.value = "a blue star"
    expected = saliency.maskclip(model, preprocess(labelled[2][0]), "a blue star")
    np.testing.assert_allclose(explorer.heatmap, expected, rtol=1e-5)
    assert explorer.figure.axes[0].get_title() == "maskclip: 'a blue star'"
    explorer.text.value = ""
    assert "needs a text" in explorer.error
    explorer.method.value = "chefer"
    explorer.text.value = "a red circle"
    explorer.layer.value = 0
    expected = saliency.chefer(model, preprocess(labelled[2][0]), "a red circle", 0)
    np.testing.assert_allclose(explorer.heatmap, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="at least one image"):
        widgets.SaliencyExplorer(model, preprocess, [])


@pytest.fixture(scope="module")
def tiny_resnet_clip(tmp_path_factory):
    """The tiny random ResNet CLIP with a full 49408-token vocabulary: (model, preprocess)."""

    weights = dict(np.load(FIXTURES / "tiny_resnet_weights.npz"))
    width = weights["token_embedding.weight"].shape[1]
    rng = np.random.default_rng(0)
    weights["token_embedding.weight"] = rng.normal(0, 0.02, (49408, width)).astype(np.float16)
    path = tmp_path_factory.mktemp("tiny_resnet") / "tiny.ckpt"
    write_clip_ckpt(weights, path)
    return clip.load(path)


def test_saliency_explorer_on_a_resnet(tiny_resnet_clip, labelled):
    model, preprocess = tiny_resnet_clip
    explorer = widgets.SaliencyExplorer(model, preprocess, labelled, "a photo of a red circle")
    assert explorer.layers == 0 and explorer.method.options == saliency.RESNET_METHODS
    assert explorer.method.value == "gradcam" and explorer.layer.disabled
    expected = saliency.gradcam(model, preprocess(labelled[0][0]), explorer.text.value)
    np.testing.assert_allclose(explorer.heatmap, expected, rtol=1e-5)


def test_embedding_explorer(tiny_clip, labelled):
    model, preprocess = tiny_clip
    colours = data.shapes_dataset("test", 10, target="colour")
    explorer = widgets.EmbeddingExplorer(
        model, preprocess, {"shapes": labelled, "colours": colours}
    )
    features = image_features(model, preprocess, labelled, normalize=True, progress=False)
    np.testing.assert_allclose(explorer.features, features, rtol=1e-5)
    assert explorer.points.shape == (12, 2) and explorer.point.max == 11
    index = explorer.select_at(*explorer.points[7])
    assert index == explorer.selected == explorer.point.value == 7
    assert f"label <b>{labelled.classes[labelled.labels[7]]}</b>" in explorer.info.value
    zero_shot = (features @ _weights(model, labelled.classes, ["a photo of a {}."]).T).argmax(1)
    np.testing.assert_array_equal(explorer.predictions, zero_shot)
    assert f"zero-shot <b>{labelled.classes[zero_shot[7]]}</b>" in explorer.info.value
    shown = Image.open(io.BytesIO(bytes(explorer.picture.value)))
    assert np.array_equal(np.asarray(shown)[::2, ::2], labelled[7][0])  # enlarged 2x
    explorer.point.value = 3
    assert explorer.selected == 3
    points = explorer.points
    explorer.colour.value = "zero-shot prediction"
    assert (
        explorer.points is points and "zero-shot prediction" in explorer.figure.axes[0].get_title()
    )
    explorer.projection.value = "tsne"
    assert explorer.points.shape == (12, 2) and not np.allclose(explorer.points, points)
    explorer.dataset.value = "colours"
    assert explorer.points.shape == (10, 2) and explorer.labels.tolist() == colours.labels.tolist()
    assert explorer.selected == 3 and explorer.figure.axes[0].get_xlabel().startswith("t-SNE 1")
