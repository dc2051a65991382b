"""A CLIP model at a glance: architecture, input, parameter count, dtype, as text or HTML."""

import dataclasses
import html
import math
from dataclasses import dataclass

from .config import CLIPConfig, open_clip_names, read_config

ACTIVATIONS = {"quick_gelu": "QuickGELU (OpenAI's)", "gelu": "GELU (exact)"}


def _tower(name: str) -> str:
    """The part of CLIP a parameter belongs to: 'image', 'text' or 'logit scale'."""
    if name.startswith("visual."):
        return "image"
    return "logit scale" if name == "logit_scale" else "text"


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'s' * (n != 1)}"


def _explicit(config: CLIPConfig) -> CLIPConfig:
    """The config with OpenAI's default MLP widths (None) written out, for comparisons."""
    return dataclasses.replace(
        config,
        vision_mlp_width=config.vision_mlp_width or 4 * config.vision_width,
        transformer_mlp_width=config.transformer_mlp_width or 4 * config.transformer_width,
    )


def _same_as(config: CLIPConfig) -> str | None:
    """The shipped open_clip config that is this architecture exactly, if any."""
    config = _explicit(config)
    for name in open_clip_names():
        if _explicit(read_config(name)) == config:
            return name
    return None


@dataclass(frozen=True)
class ModelSummary:
    """What a CLIP is: its config, parameters per tower, compute dtype; prints as a table, shows as
    HTML in a notebook."""

    config: CLIPConfig
    parameters: dict[str, int]  # learnt weights per tower: image, text, logit scale
    statistics: int  # BatchNorm running means and variances (ResNets), not learnt by gradients
    dtype: str
    compiled: bool = False

    @property
    def total(self) -> int:
        """Number of learnt parameters, as PyTorch counts a model's parameters()."""
        return sum(self.parameters.values())

    def rows(self) -> list[tuple[str, str]]:
        """(field, value) rows of the summary, in display order."""
        c = self.config
        if c.resnet:
            image = (
                f"ModifiedResNet, stages {'-'.join(map(str, c.vision_layers))} blocks, "
                f"width {c.vision_width}, attention pool {_count(c.vision_heads, 'head')}"
            )
        else:
            grid = c.image_resolution // c.vision_patch_size
            image = (
                f"ViT, {_count(c.vision_layers, 'layer')}, width {c.vision_width}, "
                f"{_count(c.vision_heads, 'head')}, "
                f"patch {c.vision_patch_size} ({grid}x{grid} grid), "
                f"MLP {c.vision_mlp_width or 4 * c.vision_width}"
            )
        mlp = c.transformer_mlp_width or 4 * c.transformer_width
        text = (
            f"Transformer, {_count(c.transformer_layers, 'layer')}, width {c.transformer_width}, "
            f"{_count(c.transformer_heads, 'head')}, MLP {mlp}"
        )
        counts = ", ".join(f"{tower} {n:,}" for tower, n in self.parameters.items())
        rows = [
            ("image encoder", image),
            ("text encoder", text),
            ("input resolution", f"{c.image_resolution} px"),
            ("context length", f"{c.context_length} tokens"),
            ("vocabulary", f"{c.vocab_size:,} tokens"),
            ("embedding dim", str(c.embed_dim)),
            ("parameters", f"{self.total:,} ({counts})"),
            *([("BatchNorm statistics", f"{self.statistics:,}")] if self.statistics else []),
            ("dtype", self.dtype),
            ("activation", ACTIVATIONS[c.activation]),
            ("encoders", "compiled (jit)" if self.compiled else "eager (PyNative)"),
        ]
        if same := _same_as(c):
            rows.insert(2, ("same architecture as", f"open_clip {same!r}"))
        return rows

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(field) for field, _ in rows)
        return "\n".join(["CLIP model"] + [f"  {f:<{width}}  {v}" for f, v in rows])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(f)}</th>"
            f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
            for f, v in self.rows()
        )
        return f"<table><caption style='text-align:left'><b>CLIP model</b></caption>{cells}</table>"


def summary(model) -> ModelSummary:
    """The summary of a CLIP model (clip.model.CLIP)."""
    parameters, statistics = {"image": 0, "text": 0, "logit scale": 0}, 0
    for name, param in model.parameters_and_names():
        if param.requires_grad:
            parameters[_tower(name)] += math.prod(param.shape)
        else:
            statistics += math.prod(param.shape)
    compiled = getattr(model, "_image_graph", None) is not None
    return ModelSummary(model.config, parameters, statistics, str(model.dtype).lower(), compiled)
