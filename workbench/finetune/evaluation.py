"""Evaluation hooks (zero-shot accuracy, retrieval recall@k), WiSE-FT, and the plots of both."""

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from mindspore import Tensor

from clip.model import CLIP
from clip.transform import Preprocess

from ..features import image_features, text_features
from ..retrieval import search
from ..zeroshot import ZeroShotClassifier
from .data import Pairs
from .loop import History


def zero_shot_accuracy(
    model: CLIP, preprocess: Preprocess, images, labels: Sequence[int], classnames: Sequence[str],
    *, templates: Sequence[str] = ("a photo of a {}.",),
) -> float:  # fmt: skip
    """Top-1 zero-shot accuracy on images whose labels index classnames."""
    classifier = ZeroShotClassifier(model, classnames, templates=templates, preprocess=preprocess)
    return classifier.fit().score(images, labels)


def recall_at_k(
    model: CLIP, preprocess: Preprocess, pairs: Pairs, *, k: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Retrieval recall@k on pairs, image to text and text to image: how often a right caption
    (image) is among the k nearest, where a caption is right for every image it captions."""
    images = image_features(model, preprocess, list(pairs.images), progress=False)
    texts = text_features(model, list(pairs.captions), progress=False, truncate=True)
    # Copies of one caption ("a photo of a hexagon.") score equally up to rounding, so only
    # counting every copy as right keeps the figure from hanging on the CPU's last bits.
    _, caption = np.unique(list(pairs.captions), return_inverse=True)
    right = caption[:, None] == caption[None, :]
    recalls = {}
    for kind, (queries, gallery) in {"image->text": (images, texts),
                                     "text->image": (texts, images)}.items():  # fmt: skip
        found, _ = search(queries, gallery, k=min(max(k), len(pairs)))
        hits = np.take_along_axis(right, found, axis=1)
        recalls.update({f"{kind} R@{n}": float(hits[:, :n].any(1).mean()) for n in k})
    return recalls


def zero_shot_hook(preprocess, images, labels, classnames, **options) -> Callable[[CLIP], float]:
    """An evals= entry for fine_tune: zero_shot_accuracy on these images."""
    return lambda model: zero_shot_accuracy(model, preprocess, images, labels, classnames,
                                            **options)  # fmt: skip


def recall_hook(preprocess, pairs: Pairs, **options) -> Callable[[CLIP], dict]:
    """An evals= entry for fine_tune: recall_at_k on these held-out pairs."""
    return lambda model: recall_at_k(model, preprocess, pairs, **options)


def wise_ft(zero_shot_model: CLIP, fine_tuned_model: CLIP, alpha: float) -> CLIP:
    """WiSE-FT (Wortsman et al. 2022): a new CLIP whose weights are (1 - alpha) zero-shot +
    alpha fine-tuned; alpha 0 is the zero-shot model, 1 the fine-tuned one."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be between 0 (zero-shot) and 1 (fine-tuned), got {alpha}")
    if zero_shot_model.config != fine_tuned_model.config:
        raise ValueError("wise_ft needs two models of one architecture (the fine-tuned one made "
                         "from the zero-shot one); their configs differ")  # fmt: skip
    a = dict(zero_shot_model.parameters_and_names())
    b = dict(fine_tuned_model.parameters_and_names())
    if a.keys() != b.keys() or any(a[n].shape != b[n].shape for n in a):
        raise ValueError("wise_ft needs two models with the same parameters and shapes")
    mixed = CLIP(zero_shot_model.config)
    for name, param in mixed.parameters_and_names():
        za, fb = a[name].asnumpy(), b[name].asnumpy()
        param.set_data(Tensor(((1 - alpha) * za + alpha * fb).astype(za.dtype)))
    return mixed


def wise_ft_sweep(
    zero_shot_model: CLIP, fine_tuned_model: CLIP, *, target: Callable[[CLIP], float],
    control: Callable[[CLIP], float], alphas: Sequence[float] = tuple(np.linspace(0, 1, 11)),
    progress: bool = True,
) -> list[dict]:  # fmt: skip
    """target and control accuracy of wise_ft at each alpha: [{alpha, target, control}, ...]."""
    from tqdm.auto import tqdm

    rows = []
    for alpha in tqdm(alphas, desc="WiSE-FT", disable=not progress):
        model = wise_ft(zero_shot_model, fine_tuned_model, float(alpha))
        rows.append({"alpha": float(alpha), "target": target(model), "control": control(model)})
    return rows


def _axes(ax) -> tuple[Figure, plt.Axes]:
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        return fig, ax
    return ax.figure, ax


def plot_wise_ft(sweep: list[dict], *, ax=None, target: str = "target task",
                 control: str = "control task") -> Figure:  # fmt: skip
    """Target-task accuracy against control-task accuracy along the WiSE-FT alphas."""
    fig, ax = _axes(ax)
    x = [100 * r["control"] for r in sweep]
    y = [100 * r["target"] for r in sweep]
    ax.plot(x, y, "o-", color="tab:blue")
    for r, xi, yi in zip(sweep, x, y, strict=True):
        ax.annotate(f"{r['alpha']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)  # fmt: skip
    ax.plot(x[0], y[0], "s", color="tab:grey", label="zero-shot (alpha 0)")
    ax.plot(x[-1], y[-1], "*", color="tab:red", markersize=12, label="fine-tuned (alpha 1)")
    ax.set(xlabel=f"{control} accuracy (%)", ylabel=f"{target} accuracy (%)",
           title="WiSE-FT: weight interpolation, zero-shot to fine-tuned")  # fmt: skip
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_history(history: History, *, ax=None) -> Figure:
    """Training loss per step, and every evaluation's values (right axis, %)."""
    fig, ax = _axes(ax)
    ax.plot(np.arange(1, len(history.loss) + 1), history.loss, color="tab:blue", label="loss")
    ax.set(xlabel="optimiser step", ylabel="contrastive loss (nats)", title="Fine-tuning")
    if history.evals:
        right = ax.twinx()
        names = [k for k in history.evals[0] if k != "step"]
        steps = [row["step"] for row in history.evals]
        for name in names:
            right.plot(steps, [100 * row[name] for row in history.evals], "o--", label=name)
        right.set(ylabel="accuracy (%)", ylim=(0, 100))
        right.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    return fig


class LivePlot:
    """A fine_tune callback that redraws plot_history in a notebook as training goes."""

    def __init__(self, every: int = 5):
        from IPython.display import display

        self.every, self.count = every, 0
        self.fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.twinx()  # as plot_history draws it: the shown figure's text stays the same throughout
        self.handle = display(self.fig, display_id=True)
        plt.close(self.fig)

    def __call__(self, history: History) -> None:
        self.count += 1
        last = history.evals and history.evals[-1]["step"] == len(history.loss)
        if self.count % self.every and not last:
            return
        self.fig.clf()
        plot_history(history, ax=self.fig.add_subplot())
        self.handle.update(self.fig)
