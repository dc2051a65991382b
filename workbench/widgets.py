"""ipywidgets front ends: PromptLab, SaliencyExplorer, EmbeddingExplorer and SearchExplorer.

Each keeps its state in plain attributes (`probs`, `heatmap`, `points`, `error`, ...), updates them
in handlers fired by its widgets, and shows `.widget` when it is the last expression of a cell.
Bad input shows a message in the front end and in `.error` instead of raising.
"""

import hashlib
import io
import re
from collections.abc import Sequence

import ipywidgets as widgets
import numpy as np
from PIL import Image

from clip.model import VisionTransformer

from . import embeddings, prompts, saliency
from .data import ImageDataset, load_image
from .features import image_features, text_features
from .zeroshot import (
    ZeroShotClassifier,
    class_weights,
    embed_prompts,
    ensemble_accuracy,
    logits,
    per_template_accuracy,
    softmax,
)

TYPED = "(typed)"


def _png(figure) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=90)
    return buffer.getvalue()


def _image_png(image, side: int = 160) -> bytes:
    """An image as PNG bytes, small ones enlarged (nearest neighbour) to about side pixels."""
    picture = load_image(image)
    picture = Image.fromarray(picture) if isinstance(picture, np.ndarray) else picture
    scale = max(1, side // max(picture.size))
    picture = picture.convert("RGB").resize(
        (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _synonyms(line: str) -> list[str]:
    """The names of a class line: 'happy / joyful' is two synonyms ('F/A-18', unspaced, is one)."""
    return re.split(r"\s+/\s+", line)


def _gallery(images) -> list:
    """The images of a data set or a sequence of images (PIL, HWC uint8 arrays or paths)."""
    if images is None:
        return []
    if isinstance(images, ImageDataset):
        return [images.images[i] for i in range(len(images))]
    return list(images)


def _figure(size=(4.5, 4)):
    from matplotlib.figure import Figure

    return Figure(figsize=size)


class _Front:
    """Shared display and error plumbing."""

    widget: widgets.Widget

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def _fail(self, message: str) -> None:
        self.error = message
        self.message.value = f"<span style='color:#b00020'>{message}</span>"

    def _ok(self) -> None:
        self.error = None
        self.message.value = ""


class PromptLab(_Front):
    """Class names x templates -> zero-shot probabilities of an image, live.

    Type class names and templates (one per line, '{}' for the class name) or pick a template
    library; choose an image from the gallery or upload one. A class line may list synonyms
    separated by ' / ' ("happy / joyful"), averaged as ZeroShotClassifier averages a class given as
    a list; a class passed as a list is shown that way. Shows probability bars, the probabilities
    under each template alone, and on request the accuracy on a labelled set. Text embeddings are
    cached per prompt, so an edit only encodes the prompts it adds.
    """

    def __init__(
        self,
        model,
        preprocess,
        classes: Sequence[str | Sequence[str]] | None = None,
        templates: Sequence[str] = ("a photo of a {}.",),
        gallery=None,
        labelled: ImageDataset | None = None,
    ):
        self.model, self.preprocess, self.labelled = model, preprocess, labelled
        self.gallery = _gallery(gallery if gallery is not None else labelled)
        classes = list(classes if classes is not None else (labelled.classes if labelled else []))
        classes = [c if isinstance(c, str) else " / ".join(c) for c in classes]
        self.logit_scale = float(np.exp(model.logit_scale.asnumpy()))
        self.classes, self.templates = classes, list(templates)
        self.image, self.probs, self.template_probs = None, None, None
        self.accuracy, self.template_accuracy, self.error = None, None, None
        self._key, self._texts = None, {}
        self._images: dict[object, np.ndarray] = {}
        self._labelled_features = None

        self.class_box = widgets.Textarea(
            "\n".join(classes), description="classes", continuous_update=False
        )
        self.library = widgets.Dropdown(
            options=[TYPED, *prompts.datasets()], value=TYPED, description="templates"
        )
        self.template_box = widgets.Textarea(
            "\n".join(templates),
            description="",
            continuous_update=False,
            layout=widgets.Layout(width="32em", height="8em"),
        )
        self.picker = widgets.Dropdown(
            options=[(f"image {i}", i) for i in range(len(self.gallery))],
            value=0 if self.gallery else None,
            description="gallery",
        )
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload")
        self.picture = widgets.Image(format="png")
        self.bars = widgets.VBox()
        self.breakdown = widgets.HTML()
        self.evaluate_button = widgets.Button(
            description="evaluate",
            disabled=labelled is None,
            tooltip="accuracy on the labelled set",
        )
        self.result = widgets.HTML()
        self.message = widgets.HTML()

        self.class_box.observe(self._on_text, "value")
        self.template_box.observe(self._on_text, "value")
        self.library.observe(self._on_library, "value")
        self.picker.observe(self._on_pick, "value")
        self.upload.observe(self._on_upload, "value")
        self.evaluate_button.on_click(lambda _: self.evaluate())
        inputs = widgets.VBox(
            [
                self.class_box,
                self.library,
                self.template_box,
                self.picker,
                self.upload,
                self.evaluate_button,
            ]
        )
        outputs = widgets.VBox([self.picture, self.bars, self.message, self.result])
        self.widget = widgets.VBox([widgets.HBox([inputs, outputs]), self.breakdown])
        if self.gallery:
            self._show(self.gallery[0], ("gallery", 0))
        else:
            self.update()

    def _on_text(self, _change) -> None:
        self.classes, self.templates = _lines(self.class_box.value), _lines(self.template_box.value)
        self.update()

    def _on_library(self, change) -> None:
        if change["new"] != TYPED:
            self.template_box.value = "\n".join(prompts.templates(change["new"]))

    def _on_pick(self, change) -> None:
        if change["new"] is not None:
            self._show(self.gallery[change["new"]], ("gallery", change["new"]))

    def _on_upload(self, change) -> None:
        if not change["new"]:
            return
        upload = change["new"][0]
        content = bytes(upload["content"])
        try:
            with Image.open(io.BytesIO(content)) as opened:
                image = opened.convert("RGB")
        except OSError:
            self._fail(f"{upload['name']} is not an image PIL can read")
            return
        self._show(image, ("upload", hashlib.sha256(content).hexdigest()))

    def _show(self, image, key) -> None:
        self.image, self._key = load_image(image), key
        self.picture.value = _image_png(image)
        self.update()

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Text features of prompts, memoised per prompt: only unseen prompts are encoded."""
        missing = [p for p in dict.fromkeys(texts) if p not in self._texts]
        if missing:
            encoded = text_features(self.model, missing, progress=False)
            self._texts.update(zip(missing, encoded, strict=True))
        return np.stack([self._texts[p] for p in texts])

    def _checked_embeddings(self) -> np.ndarray | None:
        """(T, C, D) embeddings of the current classes x templates; None, with the problem shown,
        for bad input."""
        classnames = [_synonyms(c) for c in self.classes]
        try:
            embedded = embed_prompts(self._encode, classnames, self.templates)
        except (ValueError, RuntimeError) as error:  # RuntimeError: a prompt too long to tokenize
            self._fail(str(error))
            return None
        self._ok()
        return embedded

    def update(self) -> None:
        """Recompute probabilities and the per-template breakdown for the current inputs."""
        embedded = self._checked_embeddings()
        if embedded is None:
            return
        if self.image is None:
            self.probs = self.template_probs = None
            self.bars.children, self.breakdown.value = (), ""
            return
        if self._key not in self._images:
            features = image_features(
                self.model, self.preprocess, [self.image], normalize=True, progress=False
            )
            self._images[self._key] = features[0]
        feature = self._images[self._key]
        scale = self.logit_scale
        self.probs = softmax(logits(feature, class_weights(embedded), scale))
        alone = [logits(feature, class_weights(embedded, [t]), scale) for t in range(len(embedded))]
        self.template_probs = softmax(np.stack(alone))
        self._draw()

    def _draw(self) -> None:
        order = np.argsort(-self.probs, kind="stable")
        self.bars.children = tuple(
            widgets.HBox(
                [
                    widgets.Label(self.classes[c], layout=widgets.Layout(width="12em")),
                    widgets.FloatProgress(value=float(self.probs[c]), min=0.0, max=1.0),
                    widgets.Label(f"{self.probs[c]:.1%}"),
                ]
            )
            for c in order
        )
        head = "".join(f"<th>{c}</th>" for c in self.classes)
        rows = "".join(
            f"<tr><td>{t}</td>" + "".join(f"<td>{p:.1%}</td>" for p in row) + "</tr>"
            for t, row in zip(self.templates, self.template_probs, strict=True)
        )
        self.breakdown.value = (
            f"<b>Probability under each template alone</b><table>"
            f"<tr><th>template</th>{head}</tr>{rows}</table>"
        )

    def evaluate(self) -> None:
        """Accuracy on the labelled set with the current classes and templates, and per template."""
        if self.labelled is None:
            self._fail("no labelled set: pass labelled= (a workbench.data.ImageDataset)")
            return
        if len(self.classes) != len(self.labelled.classes):
            self._fail(
                f"the labelled set has {len(self.labelled.classes)} classes "
                f"({', '.join(self.labelled.classes)}); type that many class names, "
                f"in its label order"
            )
            return
        embedded = self._checked_embeddings()
        if embedded is None:
            return
        if self._labelled_features is None:
            self._labelled_features = image_features(
                self.model, self.preprocess, self.labelled, normalize=True, progress=False
            )
        y, features = self.labelled.labels, self._labelled_features
        self.accuracy = ensemble_accuracy(features, embedded, y)
        self.template_accuracy = dict(
            zip(self.templates, per_template_accuracy(features, embedded, y), strict=True)
        )
        best = max(self.template_accuracy, key=self.template_accuracy.get)
        self.result.value = (
            f"<b>accuracy on {self.labelled.name}</b> ({len(y)} images): "
            f"{self.accuracy:.1%} with all {len(self.templates)} templates; best "
            f"single template {best!r}: {self.template_accuracy[best]:.1%}"
        )


class SaliencyExplorer(_Front):
    """Image, text, method and layer -> heatmap overlay; for chefer also the text's relevance."""

    def __init__(self, model, preprocess, images, text: str = "a photo of a cat."):
        self.model, self.preprocess = model, preprocess
        self.gallery = _gallery(images)
        if not self.gallery:
            raise ValueError("SaliencyExplorer needs at least one image")
        vit = isinstance(model.visual, VisionTransformer)
        self.layers = len(model.visual.transformer.resblocks) if vit else 0
        self.heatmap, self.figure, self.tokens, self.error = None, None, None, None

        self.picker = widgets.Dropdown(
            options=[(f"image {i}", i) for i in range(len(self.gallery))],
            value=0,
            description="image",
        )
        self.text = widgets.Text(text, description="text", continuous_update=False)
        self.method = widgets.Dropdown(
            options=saliency.available_methods(model), description="method"
        )
        self.layer = widgets.IntSlider(
            value=-1,
            min=-max(self.layers, 1),
            max=max(self.layers - 1, 0),
            description="start layer",
        )
        self.view = widgets.Image(format="png")
        self.token_view = widgets.HTML()
        self.message = widgets.HTML()
        for control in (self.picker, self.text, self.layer):
            control.observe(lambda _: self.update(), "value")
        self.method.observe(self._on_method, "value")
        controls = widgets.VBox([self.picker, self.text, self.method, self.layer])
        self.widget = widgets.VBox(
            [widgets.HBox([controls, self.view]), self.token_view, self.message]
        )
        self._on_method({"new": self.method.value})

    def _on_method(self, change) -> None:
        """Set the layer slider to the method's default (chefer: last block, rollout: first)."""
        uses_layer = change["new"] in ("chefer", "rollout")
        self.layer.disabled = not uses_layer
        default = -1 if change["new"] == "chefer" else 0
        if uses_layer and self.layer.value != default:
            self.layer.value = default  # fires update
        else:
            self.update()

    def update(self) -> None:
        """Recompute the heatmap and redraw the overlay."""
        method, text = self.method.value, self.text.value.strip()
        if not text and method not in ("rollout", "attnpool"):
            self._fail(f"{method} needs a text")
            return
        image = load_image(self.gallery[self.picker.value])
        pixels = self.preprocess(image)
        layer = self.layer.value if method in ("chefer", "rollout") else None
        self.tokens = None
        try:
            if method == "chefer":
                self.heatmap, words, scores = saliency.relevance(self.model, pixels, text, layer)
                self.tokens = (words, scores)
            else:
                self.heatmap = saliency.heatmap(self.model, pixels, text, method, layer)
        except ValueError as error:
            self._fail(str(error))
            return
        self._ok()
        self.figure = _figure()
        title = f"{method}: {text!r}" if method not in ("rollout", "attnpool") else method
        axes = self.figure.add_subplot()
        saliency.overlay(image, self.heatmap, axes, title, saliency.UNITS[method])
        self.view.value = _png(self.figure)
        self.token_view.value = ""
        if self.tokens is not None:
            top = max(self.tokens[1].max(), 1e-12)
            spans = [
                f"<span style='background:rgba(255,0,0,{score / top:.2f})'>{word}</span>"
                for word, score in zip(*self.tokens, strict=True)
            ]
            self.token_view.value = "text relevance: " + " ".join(spans)


class EmbeddingExplorer(_Front):
    """Data set, projection and colouring -> scatter of image embeddings with class-prompt stars;
    selecting a point (slider, or select_at(x, y)) shows its image, label and prediction."""

    COLOURS = ("label", "zero-shot prediction")

    def __init__(
        self,
        model,
        preprocess,
        datasets,
        limit: int = 300,
        template: str = "a photo of a {}.",
        cache=None,
    ):
        datasets = {datasets.name: datasets} if isinstance(datasets, ImageDataset) else datasets
        if not datasets:
            raise ValueError("EmbeddingExplorer needs at least one data set")
        self.model, self.preprocess, self.datasets = model, preprocess, dict(datasets)
        self.limit, self.template, self.cache = limit, template, cache
        self.points = self.features = self.labels = self.predictions = self._points = None
        self.selected, self.figure, self.error = 0, None, None
        self._memo: dict = {}

        self.dataset = widgets.Dropdown(options=list(self.datasets), description="data set")
        self.projection = widgets.Dropdown(
            options=embeddings.PROJECTIONS, value="pca", description="projection"
        )
        self.colour = widgets.Dropdown(options=self.COLOURS, description="colour by")
        self.point = widgets.IntSlider(value=0, min=0, max=0, description="point")
        self.view = widgets.Image(format="png")
        self.picture = widgets.Image(format="png")
        self.info = widgets.HTML()
        self.message = widgets.HTML()
        for control in (self.dataset, self.projection):
            control.observe(lambda _: self.update(), "value")
        self.colour.observe(lambda _: self.select(self.selected), "value")
        self.point.observe(lambda change: self.select(change["new"]), "value")
        controls = widgets.VBox(
            [self.dataset, self.projection, self.colour, self.point, self.picture, self.info]
        )
        self.widget = widgets.VBox([widgets.HBox([controls, self.view]), self.message])
        self.update()

    def _embedded(self, name: str) -> tuple:
        """The data set (at most limit images), its image features, the class prompts' text
        features and the zero-shot predictions; projections are memoised alongside."""
        if name not in self._memo:
            data = self.datasets[name]
            data = data[: self.limit] if len(data) > self.limit else data
            images = image_features(
                self.model, self.preprocess, data, cache=self.cache, normalize=True, progress=False
            )
            classifier = ZeroShotClassifier(
                self.model, data.classes, templates=[self.template], cache=self.cache
            ).fit()
            self._memo[name] = (data, images, classifier.weights_, classifier.predict(images))
        return self._memo[name]

    def update(self) -> None:
        """Project the chosen data set and redraw."""
        data, self.features, texts, self.predictions = self._embedded(self.dataset.value)
        self.labels = data.labels
        key = (self.dataset.value, self.projection.value)
        try:
            if key not in self._memo:
                stacked = np.concatenate([self.features, texts])
                self._memo[key] = embeddings.project(stacked, self.projection.value)
        except ImportError as error:
            self.points = None
            self._fail(str(error))
            return
        self._ok()
        self._points, self._data, self._texts = self._memo[key], data, texts
        self.points = self._points[: len(self.features)]
        self.point.max = len(self.features) - 1
        self.select(self.point.value)

    def select_at(self, x: float, y: float) -> int:
        """Select the point nearest to (x, y) in the current projection; returns its index."""
        index = int(np.argmin(((self.points - (x, y)) ** 2).sum(-1)))
        if index != self.point.value:
            self.point.value = index  # fires select
        else:
            self.select(index)
        return index

    def select(self, index: int) -> None:
        """Show point index: its image, label and prediction, ringed in the plot."""
        if self.points is None:
            return
        self.selected = index
        data = self._data
        colours = self.labels if self.colour.value == "label" else self.predictions
        self.figure = _figure((6, 5))
        ax = self.figure.add_subplot()
        title = f"{self.projection.value.upper()} of {data.name}, coloured by {self.colour.value}"
        embeddings.plot_projection(
            self.features,
            colours,
            data.classes,
            self._texts,
            self.projection.value,
            ax=ax,
            title=title,
            points=self._points,
        )
        ax.scatter(*self.points[index], s=160, facecolors="none", edgecolors="black", linewidths=2)
        self.view.value = _png(self.figure)
        self.picture.value = _image_png(data.images[index])
        label, predicted = data.classes[self.labels[index]], data.classes[self.predictions[index]]
        self.info.value = f"point {index}: label <b>{label}</b>, zero-shot <b>{predicted}</b>"


class SearchExplorer(_Front):
    """A query box and k slider over a collection -> a grid of its nearest items' thumbnails and
    scores, from Collection.search; a query naming an image file searches by that image."""

    def __init__(self, collection, query: str = "", k: int = 8, max_k: int = 50):
        from .collection import Collection

        self.collection = (
            collection if isinstance(collection, Collection) else Collection(collection)
        )
        self.results, self.error = None, None
        self.box = widgets.Text(query, description="query", continuous_update=False,
                                placeholder="a text, or the path of an image")  # fmt: skip
        self.k = widgets.IntSlider(value=k, min=1, max=max(max_k, k), description="k")
        self.summary = widgets.HTML()
        self.grid = widgets.HTML()
        self.message = widgets.HTML()
        for control in (self.box, self.k):
            control.observe(lambda _: self.update(), "value")
        controls = widgets.HBox([self.box, self.k])
        self.widget = widgets.VBox([controls, self.summary, self.message, self.grid])
        self.update()

    def update(self) -> None:
        """Search for the current query and redraw the grid."""
        query = self.box.value.strip()
        if not query:
            self.results, self.grid.value, self.summary.value = None, "", ""
            self._ok()
            return
        try:
            self.results = self.collection.search(query, k=self.k.value)
        except (ValueError, OSError, RuntimeError) as error:  # RuntimeError: a text too long
            self.results, self.grid.value = None, ""
            self._fail(str(error))
            return
        self._ok()
        self.summary.value = f"{len(self.results)} of {len(self.collection)} items for {query!r}"
        self.grid.value = self.results._repr_html_()
