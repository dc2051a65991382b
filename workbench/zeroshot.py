"""Zero-shot classification from class names and prompt templates, and template selection.

As in OpenAI's prompt-engineering notebook: a class's weight is the mean of its L2-normalised text
embeddings over the templates, normalised again; logits are the model's logit scale times cosine
similarity. Templates are ranked or chosen greedily on labelled image features.
"""

import os
from collections.abc import Callable, Sequence

import numpy as np

from .features import image_features, l2_normalize, text_features


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def top_k_accuracy(scores: np.ndarray, y, k: int = 1) -> float:
    """Fraction of rows whose true label is among the k highest scores (ties: lower index first)."""
    y = np.asarray(y).reshape(-1)
    if scores.ndim != 2 or len(scores) != len(y):
        raise ValueError(f"scores (N, C) and N labels expected, got {scores.shape} and {len(y)}")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be between 1 and the class count {scores.shape[1]}, got {k}")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


class ZeroShotClassifier:
    """Zero-shot classifier over class names (a name, or a list of synonyms) and templates."""

    def __init__(
        self,
        model,
        classnames: Sequence[str | Sequence[str]],
        templates: Sequence[str] = ("a photo of a {}.",),
        preprocess: Callable | None = None,
        batch_size: int = 256,
        cache: str | os.PathLike | None = None,
        progress: bool = False,
    ):
        self.model, self.classnames, self.templates = model, classnames, templates
        self.preprocess, self.batch_size = preprocess, batch_size
        self.cache, self.progress = cache, progress

    def fit(self, X=None, y=None) -> "ZeroShotClassifier":
        """Embed every template x class name; X and y are ignored (nothing is learnt from them)."""
        if isinstance(self.classnames, str) or isinstance(self.templates, str):
            raise TypeError("classnames and templates must be lists of strings, not one string")
        names = [[c] if isinstance(c, str) else list(c) for c in self.classnames]
        templates = list(self.templates)
        if not names or not templates:
            raise ValueError("need at least one class name and one template")
        if bad := [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]:
            raise ValueError(f"each template needs exactly one '{{}}' for the class name: {bad}")
        if bad := [n for n in names if not n or not all(isinstance(s, str) and s for s in n)]:
            raise ValueError(f"class names must be non-empty strings or lists of them: {bad}")
        texts = [t.format(s) for t in templates for n in names for s in n]
        embedded = text_features(self.model, texts, self.batch_size, self.cache, normalize=True,
                                 progress=self.progress)  # fmt: skip
        per_class = np.cumsum([0] + [len(n) for n in names] * len(templates))
        means = np.add.reduceat(embedded, per_class[:-1]) / np.diff(per_class)[:, None]
        # (templates, classes, D): each template's embedding per class (mean over synonyms)
        self.text_embeddings_ = means.reshape(len(templates), len(names), -1)
        self.weights_ = class_weights(self.text_embeddings_)
        self.classes_ = np.arange(len(names))
        self.logit_scale_ = float(np.exp(self.model.logit_scale.asnumpy()))
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError("this ZeroShotClassifier is not fitted yet; call fit() first")

    def image_features(self, X) -> np.ndarray:
        """L2-normalised image features of X: (N, D) float features as given, or images."""
        self._check_fitted()
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
        features = self.image_features(X)
        return self.logit_scale_ * features @ self.weights_.T

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the logits over classes, (N, C)."""
        return softmax(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        """The class index with the highest logit, (N,)."""
        return self.decision_function(X).argmax(axis=1)

    def score(self, X, y, k: int = 1) -> float:
        """Top-k accuracy on X against labels y (k=1: accuracy; k=5: top-5)."""
        return top_k_accuracy(self.decision_function(X), y, k)


def class_weights(
    text_embeddings: np.ndarray, templates: Sequence[int] | None = None
) -> np.ndarray:
    """(C, D) class weights from (T, C, D) per-template embeddings, over the chosen templates."""
    chosen = text_embeddings if templates is None else text_embeddings[list(templates)]
    return l2_normalize(chosen.mean(axis=0))


def template_accuracies(classifier: ZeroShotClassifier, X, y, k: int = 1) -> dict[str, float]:
    """Top-k accuracy of each template on its own, on labelled images or image features X."""
    if not hasattr(classifier, "weights_"):
        classifier.fit()
    features = classifier.image_features(X)
    return {
        template: top_k_accuracy(features @ class_weights(classifier.text_embeddings_, [i]).T, y, k)
        for i, template in enumerate(classifier.templates)
    }


def forward_select_templates(
    classifier: ZeroShotClassifier, X, y, k: int = 1, max_templates: int | None = None
) -> list[tuple[str, float]]:
    """Greedy forward selection: add the template that most raises validation top-k accuracy,
    stop when none raises it; returns (template, accuracy with it added) in order of addition."""
    if not hasattr(classifier, "weights_"):
        classifier.fit()
    features = classifier.image_features(X)
    templates = list(classifier.templates)
    chosen: list[int] = []
    path: list[tuple[str, float]] = []
    best = -1.0
    while len(chosen) < min(max_templates or len(templates), len(templates)):
        candidates = [i for i in range(len(templates)) if i not in chosen]
        weights = [class_weights(classifier.text_embeddings_, chosen + [i]) for i in candidates]
        scores = [top_k_accuracy(features @ w.T, y, k) for w in weights]
        pick = int(np.argmax(scores))  # first of equals: the earlier template
        if scores[pick] <= best:
            break
        best = scores[pick]
        chosen.append(candidates[pick])
        path.append((templates[candidates[pick]], best))
    return path
