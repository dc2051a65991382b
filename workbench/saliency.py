"""Where CLIP looks: image heatmaps and text-token relevance for an image-text pair.

ViT: attention rollout (Abnar & Zuidema 2020), Chefer et al. 2021's gradient-weighted relevance,
and MaskCLIP-style patch-text similarity (Zhou et al. 2022). ResNet: Grad-CAM at layer4, the
attention pool's attention map, and MaskCLIP's value path. Images are preprocessed (3, n, n) or
(N, 3, n, n) arrays; a heatmap is (n, n), or (N, n, n) for a batch, aligned with the preprocessed
image; `to_original` maps it onto the image as it was before preprocess.
"""

from collections.abc import Sequence
from functools import cache

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops
from PIL import Image

import clip
from clip.model import ModifiedResNet, VisionTransformer, l2_normalize
from clip.tokenizer import SimpleTokenizer
from clip.transform import MEAN, STD, center_crop

from . import figures

VIT_METHODS = ("chefer", "rollout", "maskclip")
RESNET_METHODS = ("gradcam", "attnpool", "maskclip")
UNITS = {
    "chefer": "relevance (a.u.)",
    "rollout": "rollout attention weight",
    "maskclip": "cosine similarity",
    "gradcam": "Grad-CAM (a.u.)",
    "attnpool": "attention probability",
}


def available_methods(model) -> tuple[str, ...]:
    """The saliency methods that fit a model's image encoder."""
    return VIT_METHODS if isinstance(model.visual, VisionTransformer) else RESNET_METHODS


def _images(model, image) -> tuple[Tensor, bool]:
    """A float32 (N, 3, n, n) Tensor of preprocessed images, and whether one image was given."""
    array = image.asnumpy() if isinstance(image, Tensor) else image
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"image must be a preprocessed (3, n, n) or (N, 3, n, n) array, got "
            f"{type(image).__name__}: pass preprocess(image) (preprocess from clip.load)"
        )
    single = array.ndim == 3
    array = array[None] if single else array
    n = model.visual.input_resolution
    if array.ndim != 4 or array.shape[1:] != (3, n, n) or not len(array):
        raise ValueError(
            f"image has shape {image.shape}; this model takes (3, {n}, {n}) or (N, 3, {n}, {n}): "
            "pass preprocess(image) (preprocess from clip.load)"
        )
    return Tensor(np.asarray(array, np.float32)), single


def _tokens(model, text, count: int) -> np.ndarray:
    """(count, L) token ids of one text (repeated) or count texts, cut after the last eot."""
    texts = [text] * count if isinstance(text, str) else list(text)
    if len(texts) != count or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"text must be one string or a list of {count} strings, one per image")
    tokens = clip.tokenize(texts, context_length=model.context_length).asnumpy()
    return tokens[:, : tokens.argmax(-1).max() + 1]


@cache
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def _upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (..., h, w) maps to (..., *size), half-pixel centres, edges clamped
    (torch's interpolate with align_corners=False, as Chefer et al. use)."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(x).astype(int)
        matrix = np.zeros((n_out, n_in))
        np.add.at(matrix, (np.arange(n_out), low), 1 - (x - low))
        np.add.at(matrix, (np.arange(n_out), np.minimum(low + 1, n_in - 1)), x - low)
        return matrix

    rows, columns = weights(grid.shape[-2], size[0]), weights(grid.shape[-1], size[1])
    return (rows @ grid @ columns.T).astype(np.float32)


def _finish(model, patches: np.ndarray, single: bool) -> np.ndarray:
    """(N, h*w) patch scores to (N, n, n) maps at the input resolution, or (n, n) for one image."""
    side = round(patches.shape[-1] ** 0.5)
    n = model.visual.input_resolution
    maps = _upsample(patches.reshape(len(patches), side, side), (n, n))
    return maps[0] if single else maps


def _layer(start: int, layers: int) -> int:
    if not -layers <= start < layers:
        raise ValueError(
            f"layer must be in [{-layers}, {layers - 1}] for {layers} layers, got {start}"
        )
    return start % layers


def _product(steps: Sequence[np.ndarray]) -> np.ndarray:
    """M_last ... M_first, for (N, L, L) matrices M."""
    result = np.broadcast_to(np.eye(steps[0].shape[-1]), steps[0].shape).copy()
    for step in steps:
        result = step @ result
    return result


def _vit(model, name: str) -> VisionTransformer:
    if not isinstance(model.visual, VisionTransformer):
        raise ValueError(
            f"{name} needs a ViT image encoder; for a ResNet use one of {RESNET_METHODS}"
        )
    return model.visual


def rollout(model, image, start_layer: int = 0) -> np.ndarray:
    """Attention rollout: product of the head-mean attentions, each averaged with the identity
    (residual) and row-normalised, from start_layer on; the class token's row over patches."""
    visual = _vit(model, "rollout")
    images, single = _images(model, image)
    probs = visual.trace(images)[2]
    start = _layer(start_layer, len(probs))
    steps = []
    for p in probs[start:]:
        step = 0.5 * p.asnumpy().astype(np.float64).mean(1) + 0.5 * np.eye(p.shape[-1])
        steps.append(step / step.sum(-1, keepdims=True))
    return _finish(model, _product(steps)[:, 0, 1:], single)


def _pairs(logits: Tensor) -> Tensor:
    """The sum of the matching pairs' logits (image i with text i): the trace."""
    return (logits * ops.eye(logits.shape[0], logits.shape[1], logits.dtype)).sum()


def _gradients(model, images: Tensor, tokens: np.ndarray) -> tuple[list, list, list, list]:
    """Attention probabilities of both towers and the gradients of the pairs' logits (image i with
    text i) with respect to them: image probs, image grads, text probs, text grads."""
    visual = model.visual
    eot = Tensor(tokens.argmax(-1).astype(np.int32))
    n, length = len(images), visual.positional_embedding.shape[0]
    image_heads = [b.attn.heads for b in visual.transformer.resblocks]
    text_heads = [b.attn.heads for b in model.transformer.resblocks]
    size = tokens.shape[1]
    offsets = [ops.zeros((n, h, length, length), ms.float32) for h in image_heads]
    offsets += [ops.zeros((n, h, size, size), ms.float32) for h in text_heads]
    split = len(image_heads)

    def logits(*offsets):
        image, _, image_probs = visual.trace(images, offsets[:split])
        text, _, text_probs = model.trace_tokens(Tensor(tokens), eot, offsets[split:])
        return _pairs(model.logits(image, text)), image_probs, text_probs

    positions = tuple(range(len(offsets)))
    grads, (image_probs, text_probs) = ms.grad(logits, positions, has_aux=True)(*offsets)
    numpy = [
        [t.asnumpy().astype(np.float64) for t in ts]
        for ts in (image_probs, grads[:split], text_probs, grads[split:])
    ]
    return tuple(numpy)


def _relevance(probs: list, grads: list, start: int) -> np.ndarray:
    """Chefer et al.'s R = I; R += mean_heads(clamp(grad * attn, min=0)) @ R from start on."""
    start = _layer(start, len(probs))
    steps = [
        np.eye(p.shape[-1]) + np.clip(g * p, 0, None).mean(1)
        for p, g in zip(probs[start:], grads[start:], strict=True)
    ]
    return _product(steps)


def chefer(model, image, text, start_layer: int = -1) -> np.ndarray:
    """Chefer et al. 2021's relevance of the image patches for the image-text logit: R[cls, 1:]
    over the image blocks from start_layer on (-1: the last block only, as in their CLIP demo)."""
    _vit(model, "chefer")
    images, single = _images(model, image)
    tokens = _tokens(model, text, len(images))
    probs, grads = _gradients(model, images, tokens)[:2]
    return _finish(model, _relevance(probs, grads, start_layer)[:, 0, 1:], single)


def relevance(
    model, image, text: str, start_layer: int = -1, text_start_layer: int = 0
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Chefer et al.'s relevance for one image-text pair from one backward pass: the image map
    (as chefer), the text's word tokens, and their relevance (the eot row of the text relevance
    without sot and eot, normalised to sum to 1). The text side runs over every text block by
    default (text_start_layer=0, as in Chefer et al.'s paper): from the last block alone (-1, their
    CLIP notebook's setting) a word's relevance is eot's clamped grad * attn on it in that block,
    all zero when more attention to any word would lower the logit."""
    _vit(model, "relevance")
    if not isinstance(text, str):
        raise TypeError(f"text must be one string, got {type(text).__name__}")
    images, single = _images(model, image)
    if not single:
        raise ValueError(f"relevance takes one image (3, n, n), got {len(images)}")
    tokens = _tokens(model, text, 1)
    image_probs, image_grads, text_probs, text_grads = _gradients(model, images, tokens)
    image_map = _finish(model, _relevance(image_probs, image_grads, start_layer)[:, 0, 1:], True)
    eot = int(tokens[0].argmax())
    scores = _relevance(text_probs, text_grads, text_start_layer)[0, eot, 1:eot]
    words = [_tokenizer().decode([t]).strip() for t in tokens[0, 1:eot]]
    return image_map, words, scores / scores.sum() if scores.sum() > 0 else scores


def text_relevance(model, image, text: str, start_layer: int = 0) -> tuple[list[str], np.ndarray]:
    """The text side of relevance: word tokens and their relevance for the pair, summing to 1
    (start_layer: the first text block, 0 = all, as relevance's text_start_layer)."""
    return relevance(model, image, text, text_start_layer=start_layer)[1:]


def maskclip(model, image, text) -> np.ndarray:
    """MaskCLIP's dense patch-text cosine similarity, no gradients: each patch token's value in
    the last attention block (ViT: out_proj, ln_post, proj; ResNet: the attention pool's v_proj
    and c_proj) taken as an image embedding and compared with the text's."""
    images, single = _images(model, image)
    text_features = model.encode_text(Tensor(_tokens(model, text, len(images))), normalize=True)
    visual = model.visual
    if isinstance(visual, VisionTransformer):
        inputs = visual.trace(images)[1]
        block = visual.transformer.resblocks[-1]
        width = inputs[-1].shape[-1]
        weight, bias = block.attn.in_proj_weight[2 * width :], block.attn.in_proj_bias[2 * width :]
        values = ops.matmul(block.ln_1(inputs[-1][:, 1:]), weight.T) + bias
        dense = visual.head(block.attn.out_proj(values))
    else:
        x = visual.stages(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)
        dense = visual.attnpool.c_proj(visual.attnpool.v_proj(x))
    similarity = (l2_normalize(dense) * text_features[:, None]).sum(-1)
    return _finish(model, similarity.asnumpy(), single)


def _resnet(model, name: str) -> ModifiedResNet:
    if not isinstance(model.visual, ModifiedResNet):
        raise ValueError(f"{name} needs a ResNet image encoder; for a ViT use one of {VIT_METHODS}")
    return model.visual


def gradcam(model, image, text) -> np.ndarray:
    """Grad-CAM at layer4: ReLU of the channel sum of activations weighted by the spatial mean of
    the image-text logit's gradient."""
    visual = _resnet(model, "gradcam")
    images, single = _images(model, image)
    text_features = model.encode_text(Tensor(_tokens(model, text, len(images))))
    activations = visual.stages(images)

    def logits(x):
        return _pairs(model.logits(visual.attnpool(x), text_features))

    grads = ms.grad(logits)(activations).asnumpy()
    weights = grads.mean(axis=(2, 3), keepdims=True)
    cam = np.maximum((weights * activations.asnumpy()).sum(1), 0)
    return _finish(model, cam.reshape(len(cam), -1), single)


def attnpool(model, image) -> np.ndarray:
    """The attention pool's attention (head mean) of its mean token over layer4's positions."""
    visual = _resnet(model, "attnpool")
    images, single = _images(model, image)
    probs = visual.attnpool.trace(visual.stages(images))[1].asnumpy()
    return _finish(model, probs.mean(1)[:, 0, 1:], single)


def heatmap(
    model, image, text=None, method: str = "chefer", layer: int | None = None
) -> np.ndarray:
    """A heatmap by method name; layer is the start layer of chefer (default -1) and rollout
    (default 0), and is ignored by the other methods."""
    if method not in available_methods(model):
        raise ValueError(
            f"method {method!r} does not fit this model; choose from {available_methods(model)}"
        )
    if method == "rollout":
        return rollout(model, image, 0 if layer is None else layer)
    if method == "attnpool":
        return attnpool(model, image)
    if text is None:
        raise ValueError(f"method {method!r} needs a text")
    if method == "chefer":
        return chefer(model, image, text, -1 if layer is None else layer)
    return {"maskclip": maskclip, "gradcam": gradcam}[method](model, image, text)


def to_original(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (n, n) heatmap of a preprocessed image mapped onto the original image of size (width,
    height): the centre crop preprocess took is filled, the rest (never seen) is NaN."""
    width, height = size
    resized, (left, top, right, bottom) = center_crop(size, heatmap.shape[-1])
    scale_x, scale_y = width / resized[0], height / resized[1]
    x0, y0 = round(left * scale_x), round(top * scale_y)
    x1, y1 = round(right * scale_x), round(bottom * scale_y)
    result = np.full((height, width), np.nan, np.float32)
    result[y0:y1, x0:x1] = _upsample(heatmap, (y1 - y0, x1 - x0))
    return result


def _display_image(image) -> np.ndarray:
    """An HWC image for imshow: PIL or uint8 arrays as they are, preprocessed ones unnormalised."""
    if isinstance(image, Tensor):
        image = image.asnumpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.dtype != np.uint8:
        image = image * np.reshape(STD, (3, 1, 1)) + np.reshape(MEAN, (3, 1, 1))
        return np.clip(image.transpose(1, 2, 0), 0, 1)
    return image


def overlay(
    image,
    heatmap: np.ndarray,
    ax=None,
    title: str = "saliency",
    label: str = "relevance",
    alpha: float = 0.5,
    *,
    cmap: str = figures.SALIENCY_CMAP,
):
    """Plot heatmap over image (PIL, HWC uint8, or preprocessed (3, n, n)) with a colourbar
    labelled with the map's unit; a heatmap of the preprocessed size over a differently sized
    image goes through to_original. Returns the Figure."""
    picture = _display_image(image)
    if heatmap.shape != picture.shape[:2]:
        heatmap = to_original(heatmap, (picture.shape[1], picture.shape[0]))
    ax, figure = figures.axes(ax, figsize=(4.5, 4))
    ax.imshow(picture)
    shown = ax.imshow(heatmap, cmap=cmap, alpha=alpha)
    ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=label)
    ax.set_title(title)
    # the image's own pixel axes (kept for labels, ticks hidden: they carry no information)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"x ({picture.shape[1]} px)")
    ax.set_ylabel(f"y ({picture.shape[0]} px)")
    return figure


def plot_text_relevance(
    words: Sequence[str], scores, ax=None, title: str = "text relevance"
):  # fmt: skip
    """Bars of each word token's relevance (text_relevance's output, shares of the total).
    Returns the Figure."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(words) != len(scores):
        raise ValueError(f"one score per word: {len(words)} words but {len(scores)} scores")
    ax, figure = figures.axes(ax, figsize=(max(3.0, 0.6 * len(words) + 1), 2.8))
    ax.bar(range(len(words)), scores, color=figures.OKABE_ITO[4])
    ax.set_xticks(range(len(words)), words)
    ax.set_xlabel("word token")
    ax.set_ylabel("relevance (share of total)")
    ax.set_title(title)
    return figure


def pointing_game(
    model,
    preprocess,
    methods: Sequence[str] | None = None,
    n: int = 200,
    seed: int = 0,
    batch_size: int = 50,
    layers: dict[str, int] | None = None,
) -> dict[str, float]:
    """Share of two-object shapes test images whose heatmap maximum falls inside the mask of the
    object a caption names ('a photo of a red circle.'), per method (layers: a start layer per
    method, else heatmap's defaults); 'baseline' is the expected hit rate of a uniformly random
    point (mean named-mask area over image area). Masks are resized (nearest) to the model's input
    resolution, as preprocess resizes the square images."""
    from .demo import shapes

    chosen = list(methods or available_methods(model))
    samples = shapes.generate("test", n, seed, objects=2)
    named = [i % 2 for i in range(n)]
    side = model.visual.input_resolution
    masks = [Image.fromarray(s.masks[k]) for s, k in zip(samples, named, strict=True)]
    masks = np.stack([np.asarray(m.resize((side, side), Image.Resampling.NEAREST)) for m in masks])
    captions = [
        shapes.with_articles(f"a photo of a {s.labels[k].colour} {s.labels[k].shape}.")
        for s, k in zip(samples, named, strict=True)
    ]
    hits = {m: [] for m in chosen}
    for start in range(0, n, batch_size):
        images = np.stack([preprocess(s.image) for s in samples[start : start + batch_size]])
        texts = captions[start : start + batch_size]
        for method in chosen:
            maps = heatmap(model, images, texts, method, (layers or {}).get(method))
            flat = maps.reshape(len(maps), -1).argmax(-1)
            inside = masks[start : start + batch_size].reshape(len(maps), -1)
            hits[method] += list(inside[np.arange(len(maps)), flat])
    return {**{m: float(np.mean(h)) for m, h in hits.items()}, "baseline": float(masks.mean())}
