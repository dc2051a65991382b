"""How CLIP's embeddings are laid out: 2-D projections, the modality gap, similarity matrices.

Every function takes (N, D) feature arrays (workbench.features makes them) and L2-normalises them
first, as CLIP compares them by cosine similarity.
"""

from collections.abc import Sequence

import numpy as np

from . import figures
from .features import l2_normalize

PROJECTIONS = ("pca", "tsne", "umap")
_AXIS_NAMES = {"pca": "PC", "tsne": "t-SNE", "umap": "UMAP"}


def _normalized(features) -> np.ndarray:
    """Checked (N, D) features, L2-normalised in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or not len(features):
        raise ValueError(f"features must be a non-empty (N, D) array, got shape {features.shape}")
    return l2_normalize(features)


def project(features, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(N, 2) coordinates of L2-normalised features by PCA, t-SNE or UMAP (umap-learn)."""
    x = _normalized(features)
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(1, (len(x) - 1) / 3)))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        try:
            import umap
        except ImportError as err:
            raise ImportError(
                "UMAP projections need umap-learn, which is not installed: "
                "`pip install umap-learn`, or use method='pca' or 'tsne'"
            ) from err
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    raise ValueError(f"method must be one of {PROJECTIONS}, got {method!r}")


def _label_axes(ax, method: str, title: str) -> None:
    name = _AXIS_NAMES[method]
    unit = " (unit-sphere coordinates)" if method == "pca" else " (arbitrary units)"
    ax.set_xlabel(f"{name} 1{unit}")
    ax.set_ylabel(f"{name} 2{unit}")
    ax.set_title(title)


def _thumbnail(ax, image, xy, zoom: float) -> None:
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    from .data import load_image

    picture = np.asarray(load_image(image))
    ax.add_artist(AnnotationBbox(OffsetImage(picture, zoom=zoom), xy, frameon=False))


def plot_projection(
    image_features,
    labels=None,
    classes: Sequence[str] | None = None,
    text_features=None,
    method: str = "pca",
    images=None,
    ax=None,
    title: str | None = None,
    thumbnail_zoom: float = 0.4,
    seed: int = 0,
    points=None,
):
    """Scatter of the 2-D projection of image embeddings (dots) and, if given, text embeddings
    (one per class, stars) in one shared projection, coloured by label; images (one per image
    embedding) are drawn as thumbnails at their points; a class named as a colour ("red") is drawn
    in it, other classes in the Okabe-Ito palette (marker changing after eight). points: the
    projection (images then texts) when already computed. Returns the Figure."""
    from matplotlib.colors import CSS4_COLORS

    image_features = _normalized(image_features)
    count = len(image_features)
    labels = np.zeros(count, int) if labels is None else np.asarray(labels).reshape(-1)
    if len(labels) != count:
        raise ValueError(f"{count} image embeddings but {len(labels)} labels")
    classes = list(classes) if classes is not None else [str(c) for c in range(labels.max() + 1)]
    stacked = image_features
    if text_features is not None:
        text_features = _normalized(text_features)
        if len(text_features) != len(classes):
            raise ValueError(
                f"one text embedding per class: {len(classes)} classes but "
                f"{len(text_features)} text embeddings"
            )
        stacked = np.concatenate([image_features, text_features])
    points = project(stacked, method, seed) if points is None else np.asarray(points)
    if points.shape != (len(stacked), 2):
        raise ValueError(f"points must have shape {(len(stacked), 2)}, got {points.shape}")
    ax, figure = figures.axes(ax)
    colours = [name if name in CSS4_COLORS else figures.colour(c) for c, name in enumerate(classes)]
    for c, name in enumerate(classes):
        chosen = labels == c
        if chosen.any():
            ax.scatter(*points[:count][chosen].T, s=14, color=colours[c], marker=figures.marker(c),
                       label=name)  # fmt: skip
    if text_features is not None:
        for c, name in enumerate(classes):
            ax.scatter(
                *points[count + c],
                s=220,
                marker="*",
                color=colours[c],
                edgecolors="black",
                linewidths=0.8,
            )
            ax.annotate(
                f'"{name}"',
                points[count + c],
                fontsize=8,
                xytext=(5, 5),
                textcoords="offset points",
            )
    if images is not None:
        if len(images) != count:
            raise ValueError(f"{count} image embeddings but {len(images)} images")
        for image, xy in zip(images, points[:count], strict=True):
            _thumbnail(ax, image, xy, thumbnail_zoom)
    ax.legend(fontsize=8, markerscale=1.5, loc="best", title="label")
    what = (
        "image and text embeddings (stars: class prompts)"
        if text_features is not None
        else ("image embeddings")
    )
    _label_axes(ax, method, title or f"{method.upper()} of {what}")
    return figure


def modality_gap(image_features, text_features) -> float:
    """Liang et al. 2022's modality gap: the distance between the centroids of the L2-normalised
    image and text embeddings."""
    image, text = _normalized(image_features), _normalized(text_features)
    if image.shape[1] != text.shape[1]:
        raise ValueError(f"image embeddings have width {image.shape[1]}, text {text.shape[1]}")
    return float(np.linalg.norm(image.mean(0) - text.mean(0)))


def plot_modality_gap(image_features, text_features, ax=None, title: str | None = None):
    """Liang et al.'s figure: matched image-text pairs (row i with row i) in a 2-D PCA of both
    modalities, with a line joining each pair; the gap is in the title. Returns the Figure."""
    image, text = _normalized(image_features), _normalized(text_features)
    if image.shape != text.shape:
        raise ValueError(f"paired embeddings need equal shapes, got {image.shape} and {text.shape}")
    gap = modality_gap(image, text)
    points = project(np.concatenate([image, text]), "pca")
    ax, figure = figures.axes(ax)
    count = len(image)
    for a, b in zip(points[:count], points[count:], strict=True):
        ax.plot([a[0], b[0]], [a[1], b[1]], color="0.7", linewidth=0.6, zorder=1)
    ax.scatter(*points[:count].T, s=14, color=figures.OKABE_ITO[5], label="image", zorder=2)
    ax.scatter(*points[count:].T, s=16, color=figures.OKABE_ITO[4], marker="^", label="text",
               zorder=2)  # fmt: skip
    ax.legend(loc="best")
    _label_axes(ax, "pca", title or f"Modality gap: {gap:.3f} (centroid distance, unit sphere)")
    return figure


def plot_similarity(
    image_features,
    text_features,
    images,
    captions: Sequence[str],
    ax=None,
    title: str = "Cosine similarity between text and image features",
    *,
    cmap: str = figures.HEATMAP_CMAP,
):
    """OpenAI's Interacting_with_CLIP figure: text (rows, captions) x image (columns, thumbnails)
    cosine similarities, each written in its cell, with a colourbar. Returns the Figure."""
    similarity = _normalized(text_features) @ _normalized(image_features).T
    rows, columns = similarity.shape
    if len(captions) != rows or len(images) != columns:
        raise ValueError(
            f"{rows} captions and {columns} images expected, got {len(captions)} and {len(images)}"
        )
    from .data import load_image

    ax, figure = figures.axes(ax, figsize=(1.2 * columns + 4, 1.0 * rows + 2))
    shown = ax.imshow(similarity, vmin=similarity.min(), vmax=similarity.max(), cmap=cmap)
    ax.figure.colorbar(shown, ax=ax, fraction=0.03, pad=0.02, label="cosine similarity")
    ax.set_yticks(range(rows), captions)
    ax.set_xticks([])
    for i, image in enumerate(images):
        ax.imshow(
            np.asarray(load_image(image)), extent=(i - 0.5, i + 0.5, -1.6, -0.6), origin="lower"
        )
    for x in range(columns):
        for y in range(rows):
            dark = shown.norm(similarity[y, x]) < 0.5  # the lower half of viridis-like maps
            ax.text(x, y, f"{similarity[y, x]:.2f}", ha="center", va="center", size=9,
                    color="white" if dark else "black")  # fmt: skip
    for side in ("left", "top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_xlim(-0.5, columns - 0.5)
    ax.set_ylim(rows - 0.5, -1.7)
    ax.set_xlabel("images")
    ax.set_ylabel("captions")
    ax.set_title(title)
    return figure
