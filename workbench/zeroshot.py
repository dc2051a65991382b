"""Zero-shot classification from class names and prompt templates, and template selection.

As in OpenAI's prompt-engineering notebook: a class's weight is the mean of its L2-normalised text
embeddings over the templates, normalised again; logits are the model's logit scale times cosine
similarity. A class may have synonyms, averaged per template. Templates are ranked or chosen
greedily on labelled image features. ZeroShotClassifier and the widgets share the functions here.
"""

import html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from . import figures
from .features import image_features, l2_normalize, text_features

ClassNames = Sequence[str | Sequence[str]]  # a class is a name, or a list of synonyms


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_k_accuracy(scores: np.ndarray, y, k: int = 1) -> float:
    """Fraction of rows whose true column y is among the k highest scores (ties: lower first)."""
    y = np.asarray(y).reshape(-1)
    if scores.ndim != 2 or len(scores) != len(y):
        raise ValueError(f"scores (N, C) and N labels expected, got {scores.shape} and {len(y)}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be between 1 and the class count {scores.shape[1]}, got {k}")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def embed_prompts(
    encode: Callable[[list[str]], np.ndarray], classnames: ClassNames, templates: Sequence[str]
) -> np.ndarray:
    """(T, C, D) embedding of each template x class: the mean over the class's synonyms of their
    L2-normalised prompt embeddings; encode maps a list of prompts to (N, D) text features."""
    if isinstance(classnames, str) or isinstance(templates, str):
        raise TypeError("classnames and templates must be lists of strings, not one string")
    names = [[c] if isinstance(c, str) else list(c) for c in classnames]
    templates = list(templates)
    if not names:
        raise ValueError("need at least one class name")
    if not templates:
        raise ValueError("need at least one template, with '{}' for the class name")
    if bad := [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]:
        raise ValueError(f"each template needs exactly one '{{}}' for the class name: {bad}")
    if bad := [n for n in names if not n or not all(isinstance(s, str) and s for s in n)]:
        raise ValueError(f"class names must be non-empty strings or lists of them: {bad}")
    prompts = [t.format(s) for t in templates for n in names for s in n]
    embedded = l2_normalize(np.asarray(encode(prompts)))
    bounds = np.cumsum([0] + [len(n) for n in names] * len(templates))
    means = np.add.reduceat(embedded, bounds[:-1]) / np.diff(bounds)[:, None]
    return means.reshape(len(templates), len(names), -1)


def class_weights(
    text_embeddings: np.ndarray, templates: Sequence[int] | None = None
) -> np.ndarray:
    """(C, D) class weights from (T, C, D) per-template embeddings, over the chosen templates."""
    chosen = text_embeddings if templates is None else text_embeddings[list(templates)]
    return l2_normalize(chosen.mean(axis=0))


def logits(features: np.ndarray, weights: np.ndarray, logit_scale: float = 1.0) -> np.ndarray:
    """(N, C) logits: logit_scale times the cosine similarity of unit image features and weights."""
    return logit_scale * features @ weights.T


def ensemble_accuracy(
    features: np.ndarray, text_embeddings: np.ndarray, y, templates: Sequence[int] | None = None,
    k: int = 1,
) -> float:  # fmt: skip
    """Top-k accuracy on unit image features of the ensemble of the chosen templates (all: None);
    y holds class indices."""
    return top_k_accuracy(logits(features, class_weights(text_embeddings, templates)), y, k)


def per_template_accuracy(
    features: np.ndarray, text_embeddings: np.ndarray, y, k: int = 1
) -> list[float]:
    """Top-k accuracy of each template alone, in template order; y holds class indices."""
    templates = range(len(text_embeddings))
    return [ensemble_accuracy(features, text_embeddings, y, [t], k) for t in templates]


def _columns(classes: np.ndarray, y) -> np.ndarray:
    """The column of classes holding each label of y; a ValueError names labels not in classes."""
    column = {label: i for i, label in enumerate(classes.tolist())}
    values, inverse = np.unique(np.asarray(y).reshape(-1), return_inverse=True)
    if unknown := [v for v in values.tolist() if v not in column]:
        raise ValueError(f"y holds labels that are not among the classifier's classes_: {unknown}")
    return np.array([column[v] for v in values.tolist()], dtype=np.intp)[inverse.reshape(-1)]


class ZeroShotClassifier(ClassifierMixin, BaseEstimator):
    """Zero-shot classifier over class names (a name, or a list of synonyms) and templates.

    A scikit-learn estimator: fit embeds the prompts and learns nothing from X or y; labels are
    what predict returns for each class name (default 0 .. C-1), and what score's y holds.
    """

    def __init__(
        self,
        model,
        classnames: ClassNames,
        *,
        templates: Sequence[str] = ("a photo of a {}.",),
        labels: Sequence | None = None,
        preprocess: Callable | None = None,
        batch_size: int = 256,
        cache: str | os.PathLike | None = None,
        progress: bool = False,
    ):
        self.model, self.classnames, self.templates = model, classnames, templates
        self.labels, self.preprocess, self.batch_size = labels, preprocess, batch_size
        self.cache, self.progress = cache, progress

    def __sklearn_clone__(self) -> "ZeroShotClassifier":
        """An unfitted copy that shares the model (a fixed feature extractor, not worth copying)."""
        params = self.get_params(deep=False)
        del params["model"]
        return type(self)(self.model, **{k: clone(v, safe=False) for k, v in params.items()})

    def fit(self, X=None, y=None) -> "ZeroShotClassifier":
        """Embed every template x class name; X is ignored, and y only checked against labels."""

        def encode(texts: list[str]) -> np.ndarray:
            return text_features(self.model, texts, batch_size=self.batch_size, cache=self.cache,
                                 progress=self.progress)  # fmt: skip

        text_embeddings = embed_prompts(encode, self.classnames, self.templates)
        count = text_embeddings.shape[1]
        classes = np.arange(count) if self.labels is None else np.asarray(self.labels)
        if classes.shape != (count,) or len(np.unique(classes)) != count:
            raise ValueError(
                f"labels must be {count} distinct labels, one per class: {self.labels}"
            )
        if y is not None:
            _columns(classes, y)
        self.text_embeddings_ = text_embeddings  # (templates, classes, D)
        self.weights_ = class_weights(text_embeddings)
        self.classes_ = classes
        self.logit_scale_ = float(np.exp(self.model.logit_scale.asnumpy()))
        return self

    def image_features(self, X) -> np.ndarray:
        """L2-normalised image features of X: (N, D) float features as given, or images."""
        check_is_fitted(self)
        width = self.weights_.shape[1]
        if isinstance(X, np.ndarray) and X.ndim == 2 and np.issubdtype(X.dtype, np.floating):
            if X.shape[1] != width:
                raise ValueError(f"features have width {X.shape[1]}; this model's is {width}")
            return l2_normalize(X.astype(np.float32))
        if self.preprocess is None:
            raise ValueError("to classify images pass preprocess= to ZeroShotClassifier, or pass "
                             "(N, D) image features")  # fmt: skip
        return image_features(self.model, self.preprocess, X, cache=self.cache, normalize=True,
                              progress=self.progress)  # fmt: skip

    def decision_function(self, X) -> np.ndarray:
        """Logits (N, C): the logit scale times cosine similarity with each class weight."""
        return logits(self.image_features(X), self.weights_, self.logit_scale_)

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the logits over classes, (N, C)."""
        return softmax(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        """The label of the class with the highest logit, (N,)."""
        columns = self.decision_function(X).argmax(axis=1)
        return self.classes_[columns]

    def score(self, X, y, k: int = 1) -> float:
        """Top-k accuracy on X against labels y (k=1: accuracy; k=5: top-5)."""
        return top_k_accuracy(self.decision_function(X), _columns(self.classes_, y), k)

    def top_k(self, X, k: int = 5) -> "ZeroShotResult":
        """The k most probable classes of each image of X with their probabilities, for reading
        (a table when printed or shown in a notebook) and plotting."""
        proba = self.predict_proba(X)
        if not 1 <= k <= proba.shape[1]:
            raise ValueError(f"k must be between 1 and the class count {proba.shape[1]}, got {k}")
        columns = np.argsort(-proba, axis=1, kind="stable")[:, :k]
        names = [c if isinstance(c, str) else " / ".join(c) for c in self.classnames]
        return ZeroShotResult(
            np.take_along_axis(proba, columns, axis=1), columns, self.classes_[columns], names
        )


@dataclass(frozen=True, eq=False)
class ZeroShotResult:
    """The top-k classes of N images: probabilities (N, k), columns (N, k) into classes_, labels
    (N, k) as predict returns them, and every class's name."""

    probabilities: np.ndarray
    columns: np.ndarray
    labels: np.ndarray
    classnames: list[str]

    MAX_ROWS = 10  # images shown in a repr; the arrays hold them all

    def __len__(self) -> int:
        return len(self.probabilities)

    def names(self, i: int) -> list[str]:
        """The class names of image i's top k, most probable first."""
        return [self.classnames[c] for c in self.columns[i]]

    def _heading(self) -> str:
        count, k = self.probabilities.shape
        images = "1 image" if count == 1 else f"{count} images"
        return f"Zero-shot top {k} of {len(self.classnames)} classes, {images}"

    def __repr__(self) -> str:
        lines = [self._heading()]
        if len(self) == 1:
            width = max(len(n) for n in self.names(0))
            lines += [f"  {'rank':>4}  {'class':<{width}}  probability"]
            lines += [f"  {r:>4}  {n:<{width}}  {100 * p:10.2f}%"
                      for r, (n, p) in enumerate(zip(self.names(0), self.probabilities[0],
                                                     strict=True), 1)]  # fmt: skip
            return "\n".join(lines)
        for i in range(min(len(self), self.MAX_ROWS)):
            ranked = zip(self.names(i), self.probabilities[i], strict=True)
            lines.append(f"  image {i}: " + ", ".join(f"{n} {100 * p:.1f}%" for n, p in ranked))
        if len(self) > self.MAX_ROWS:
            lines.append(f"  ... {len(self) - self.MAX_ROWS} more images")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        k = self.probabilities.shape[1]
        head = "".join(f"<th>#{r}</th>" for r in range(1, k + 1))
        rows = []
        for i in range(min(len(self), self.MAX_ROWS)):
            cells = "".join(
                f"<td style='text-align:left'>{html.escape(n)}<br>"
                f"<span style='display:inline-block;height:0.6em;width:{60 * p:.1f}px;"
                f"background:{figures.OKABE_ITO[4]}'></span> {100 * p:.1f}%</td>"
                for n, p in zip(self.names(i), self.probabilities[i], strict=True)
            )
            rows.append(f"<tr><th>image {i}</th>{cells}</tr>")
        if len(self) > self.MAX_ROWS:
            rows.append(f"<tr><td colspan='{k + 1}'>... {len(self) - self.MAX_ROWS} more images"
                        "</td></tr>")  # fmt: skip
        heading = html.escape(self._heading())
        caption = f"<caption style='text-align:left'><b>{heading}</b></caption>"
        return f"<table>{caption}<tr><th>image</th>{head}</tr>{''.join(rows)}</table>"

    def plot(self, index: int = 0, ax=None, title: str | None = None):
        """Bars of image index's top-k probabilities (%). Returns the Figure."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} images")
        k = self.probabilities.shape[1]
        ax, figure = figures.axes(ax, figsize=(5, 0.4 * k + 1.2))
        ax.barh(self.names(index), 100 * self.probabilities[index], color=figures.OKABE_ITO[4])
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("probability (%)")
        ax.set_ylabel("class")
        ax.set_title(title or f"top {k} of {len(self.classnames)} classes")
        return figure


def _fitted(classifier: ZeroShotClassifier) -> ZeroShotClassifier:
    """The classifier if fitted, else a fitted clone: the caller's classifier stays as it is."""
    try:
        check_is_fitted(classifier)
    except NotFittedError:
        return clone(classifier).fit()
    return classifier


def template_accuracies(classifier: ZeroShotClassifier, X, y, k: int = 1) -> dict[str, float]:
    """Top-k accuracy of each template on its own, on labelled images or image features X."""
    fitted = _fitted(classifier)
    features, columns = fitted.image_features(X), _columns(fitted.classes_, y)
    accuracies = per_template_accuracy(features, fitted.text_embeddings_, columns, k)
    return dict(zip(fitted.templates, accuracies, strict=True))


def forward_select_templates(
    classifier: ZeroShotClassifier, X, y, k: int = 1, max_templates: int | None = None
) -> list[tuple[str, float]]:
    """Greedy forward selection: add the template that most raises validation top-k accuracy,
    stop when none raises it; returns (template, accuracy with it added) in order of addition."""
    fitted = _fitted(classifier)
    features, columns = fitted.image_features(X), _columns(fitted.classes_, y)
    templates = list(fitted.templates)
    chosen: list[int] = []
    path: list[tuple[str, float]] = []
    best = -1.0
    while len(chosen) < min(max_templates or len(templates), len(templates)):
        candidates = [i for i in range(len(templates)) if i not in chosen]
        scores = [ensemble_accuracy(features, fitted.text_embeddings_, columns, chosen + [i], k)
                  for i in candidates]  # fmt: skip
        pick = int(np.argmax(scores))  # first of equals: the earlier template
        if scores[pick] <= best:
            break
        best = scores[pick]
        chosen.append(candidates[pick])
        path.append((templates[candidates[pick]], best))
    return path
