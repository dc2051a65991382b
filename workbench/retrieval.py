"""Top-k retrieval by cosine similarity over extracted features: text to image, image to image."""

import numpy as np

from .features import l2_normalize, text_features


def search(queries, gallery, k: int = 5, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine scores, best first, of the k gallery rows nearest each query row.

    queries (Q, D) or (D,), gallery (N, D); exclude (Q,) optional gallery indices never returned
    for the matching query (e.g. the query itself). A 1-D query gives 1-D results.
    """
    single = np.ndim(queries) == 1
    queries, gallery = np.atleast_2d(queries), np.asarray(gallery)
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries (Q, D) and gallery (N, D) of one width expected, got "
                         f"{queries.shape} and {gallery.shape}")  # fmt: skip
    queries = l2_normalize(np.asarray(queries, np.float32))
    gallery = l2_normalize(np.asarray(gallery, np.float32))
    available = len(gallery) - (exclude is not None)
    if not 1 <= k <= available:
        raise ValueError(f"k must be between 1 and {available} (the gallery size), got {k}")
    scores = queries @ gallery.T
    if exclude is not None:
        scores[np.arange(len(queries)), np.asarray(exclude).reshape(-1)] = -np.inf
    if k < scores.shape[1]:  # the k best first (linear time), then only those sorted
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best.sort(axis=1)  # by gallery index, so the stable sort breaks ties by index
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
        indices = np.take_along_axis(best, order, axis=1)
    else:
        indices = np.argsort(-scores, axis=1, kind="stable")
    top = np.take_along_axis(scores, indices, axis=1)
    return (indices[0], top[0]) if single else (indices, top)


def text_to_image(model, texts, image_features, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """For each text, the k images (indices into image_features) it matches best, with scores."""
    single = isinstance(texts, str)
    queries = text_features(model, texts, progress=False)
    return search(queries[0] if single else queries, image_features, k)


def image_to_image(image_features, queries, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The k images nearest each query: query features (Q, D), or gallery indices (never returned
    for themselves)."""
    queries = np.asarray(queries)
    if np.issubdtype(queries.dtype, np.integer):
        return search(np.asarray(image_features)[queries], image_features, k, exclude=queries)
    return search(queries, image_features, k)
