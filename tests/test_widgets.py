"""workbench.widgets without a browser: set widget values, fire handlers, check state and output."""

import datetime
import io

import matplotlib
import numpy as np
import pytest
from PIL import Image

from workbench import data, prompts, saliency, widgets
from workbench.features import image_features
from workbench.zeroshot import ZeroShotClassifier

matplotlib.use("Agg")
SHAPES = ["circle", "square", "triangle", "star", "cross"]


@pytest.fixture(scope="module")
def labelled():
    return data.shapes("test", 12)


@pytest.fixture
def lab(tiny_clip, labelled):
    model, preprocess = tiny_clip
    return widgets.PromptLab(model, preprocess, templates=["a photo of a {}.", "a {} shape"],
                             labelled=labelled)  # fmt: skip


def _expected(model, preprocess, classes, templates, images) -> np.ndarray:
    classifier = ZeroShotClassifier(model, classes, templates, preprocess).fit()
    return classifier.predict_proba(images)


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
    assert lab.probs.sum() == pytest.approx(1)
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
    classifier = ZeroShotClassifier(tiny_clip[0], SHAPES, lab.templates, tiny_clip[1]).fit()
    assert lab.accuracy == pytest.approx(classifier.score(labelled, labelled.labels))
    assert set(lab.template_accuracy) == set(lab.templates)
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


def test_embedding_explorer(tiny_clip, labelled):
    model, preprocess = tiny_clip
    colours = data.shapes("test", 10, target="colour")
    explorer = widgets.EmbeddingExplorer(
        model, preprocess, {"shapes": labelled, "colours": colours}
    )
    features = image_features(model, preprocess, labelled, normalize=True, progress=False)
    np.testing.assert_allclose(explorer.features, features, rtol=1e-5)
    assert explorer.points.shape == (12, 2) and explorer.point.max == 11
    index = explorer.select_at(*explorer.points[7])
    assert index == explorer.selected == explorer.point.value == 7
    assert f"label <b>{labelled.classes[labelled.labels[7]]}</b>" in explorer.info.value
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
