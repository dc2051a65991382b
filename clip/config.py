"""A CLIP's architecture: one frozen config, read from a state dict's shapes, an open_clip
`open_clip_config.json`, a Hugging Face `config.json`, or an open_clip model name.

Everything that changes the numbers is in the config; what this port cannot run (timm or HF text
towers, CoCa, SigLIP, LayerScale, other pooling) is refused by name, never approximated.
"""

import dataclasses
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .transform import MEAN, STD

OPEN_CLIP_CONFIGS = Path(__file__).resolve().parent / "open_clip_configs"


@dataclass(frozen=True)
class CLIPConfig:
    """Everything about a CLIP's architecture that changes its numbers (OpenAI's arguments, plus
    what open_clip and Hugging Face models set differently)."""

    embed_dim: int
    image_resolution: int
    vision_layers: int | tuple[int, int, int, int]  # a tuple: ModifiedResNet's four stages
    vision_width: int
    vision_patch_size: int | None  # None for a ModifiedResNet
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_layers: int
    vision_head_width: int = 64
    transformer_head_width: int = 64
    vision_mlp_width: int | None = None  # None: 4 * vision_width
    transformer_mlp_width: int | None = None  # None: 4 * transformer_width
    activation: str = "quick_gelu"  # OpenAI's; "gelu" (exact) for most open_clip/LAION models
    image_mean: tuple[float, float, float] = MEAN
    image_std: tuple[float, float, float] = STD

    def __post_init__(self):
        sizes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("activation", "image_mean", "image_std", "vision_layers"):
            del sizes[name]
        if self.resnet:
            if len(self.vision_layers) != 4 or self.vision_patch_size is not None:
                raise ValueError(
                    f"a ResNet's vision_layers are 4 stages and it has no vision_patch_size, got "
                    f"{self.vision_layers} and {self.vision_patch_size}"
                )
            sizes.update({f"vision_layers[{i}]": n for i, n in enumerate(self.vision_layers)})
            del sizes["vision_patch_size"]
        else:
            sizes["vision_layers"] = self.vision_layers
        for name, value in sizes.items():  # None: OpenAI's 4 * width (the MLP widths only)
            if value is None and name.endswith("mlp_width"):
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"activation must be 'quick_gelu' or 'gelu', got {self.activation!r}")
        widths = [(self.transformer_width, self.transformer_head_width, "text")]
        if not self.resnet:
            widths.append((self.vision_width, self.vision_head_width, "vision"))
        for width, head_width, tower in widths:
            if head_width < 1 or width < head_width:  # heads = width // head_width, as both do
                raise ValueError(
                    f"{tower} width {width} with head width {head_width} gives no attention "
                    "head; pass the model's config (clip.load(..., config=...))"
                )

    def to_json(self) -> str:
        """The config as a JSON object (what from_json reads back)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "CLIPConfig":
        """A config from to_json's JSON; unknown or missing fields are a ValueError."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a CLIPConfig is a JSON object, got {type(data).__name__}")
        for name in ("vision_layers", "image_mean", "image_std"):
            if isinstance(data.get(name), list):
                data[name] = tuple(data[name])
        try:
            return cls(**data)
        except TypeError as err:
            raise ValueError(f"not a CLIPConfig: {err}") from err

    @property
    def resnet(self) -> bool:
        """Whether the image tower is OpenAI's ModifiedResNet (else a ViT)."""
        return isinstance(self.vision_layers, tuple)

    @property
    def vision_heads(self) -> int:
        """Attention heads of the ViT, or of the ResNet's attention pool (width * 32 channels)."""
        return self.vision_width * (32 if self.resnet else 1) // self.vision_head_width

    @property
    def transformer_heads(self) -> int:
        """Attention heads of the text transformer."""
        return self.transformer_width // self.transformer_head_width


def model_config(state_dict: dict) -> CLIPConfig:
    """The architecture an OpenAI-named state dict's shapes give, by OpenAI's build_model rules
    (QuickGELU, 64-wide heads: what the shapes cannot tell)."""
    vit = "visual.proj" in state_dict
    required = ["text_projection", "positional_embedding", "token_embedding.weight"]
    required += ["ln_final.weight", "visual.conv1.weight"]
    required += ["visual.positional_embedding"] if vit else ["visual.attnpool.positional_embedding"]
    required += [] if vit else ["visual.layer1.0.conv1.weight"]
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise ValueError(f"not a CLIP state dict: missing {', '.join(missing)}")
    keys = list(state_dict)
    vision_mlp = None
    if vit:
        vision_width, _, vision_patch_size, _ = _shape(
            state_dict, "visual.conv1.weight", "(width, 3, patch, patch)"
        )
        vision_layers = len(
            [k for k in keys if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")]
        )
        image_resolution = vision_patch_size * _grid(state_dict, "visual.positional_embedding")
        vision_mlp = _mlp_width(state_dict, "visual.transformer", vision_width)
    else:
        _shape(state_dict, "visual.conv1.weight", "(width / 2, 3, 3, 3)")
        vision_layers = tuple(
            len({k.split(".")[2] for k in keys if k.startswith(f"visual.layer{b}.")})
            for b in (1, 2, 3, 4)
        )
        vision_width = _shape(state_dict, "visual.layer1.0.conv1.weight", "(width, in, 1, 1)")[0]
        vision_patch_size = None
        image_resolution = 32 * _grid(state_dict, "visual.attnpool.positional_embedding")
    width = _shape(state_dict, "ln_final.weight", "(width,)")[0]
    layers = len({k.split(".")[2] for k in keys if k.startswith("transformer.resblocks.")})
    blocks = {"visual.transformer": vision_layers} if vit else {}
    blocks |= {} if vit else {f"visual.layer{b + 1}": n for b, n in enumerate(vision_layers)}
    if empty := [stem for stem, n in {**blocks, "transformer": layers}.items() if n == 0]:
        raise ValueError(f"not a CLIP state dict: no blocks in {', '.join(empty)}")
    return CLIPConfig(
        embed_dim=_shape(state_dict, "text_projection", "(width, embed dim)")[1],
        image_resolution=image_resolution,
        vision_layers=vision_layers,
        vision_width=vision_width,
        vision_patch_size=vision_patch_size,
        context_length=_shape(state_dict, "positional_embedding", "(context length, width)")[0],
        vocab_size=_shape(state_dict, "token_embedding.weight", "(vocabulary, width)")[0],
        transformer_width=width,
        transformer_layers=layers,
        vision_mlp_width=vision_mlp,
        transformer_mlp_width=_mlp_width(state_dict, "transformer", width),
    )


def _mlp_width(state_dict: dict, stem: str, width: int) -> int | None:
    """The first block's MLP width, or None for OpenAI's 4 * width."""
    key = f"{stem}.resblocks.0.mlp.c_fc.weight"
    mlp = _shape(state_dict, key, "(mlp width, width)")[0] if key in state_dict else None
    return None if mlp in (None, 4 * width) else mlp


def _shape(state_dict: dict, key: str, expected: str) -> tuple[int, ...]:
    """The shape of state_dict[key], checked to have as many sizes as expected, each >= 1."""
    found = tuple(int(n) for n in np.shape(state_dict[key]))
    if len(found) != len(expected.strip("(,)").split(",")) or min(found, default=0) < 1:
        raise ValueError(
            f"{key} has shape {found}, expected {expected} (each size >= 1); the file is damaged "
            "or not an OpenAI-architecture CLIP"
        )
    return found


def _grid(state_dict: dict, key: str) -> int:
    """The side of the square grid of image tokens a positional embedding (grid**2 + 1) has."""
    tokens = _shape(state_dict, key, "(grid * grid + 1, width)")[0]
    side = math.isqrt(tokens - 1)
    if side < 1 or side * side != tokens - 1:
        raise ValueError(
            f"{key} has {tokens} rows, expected grid * grid + 1 (a square grid of image tokens "
            "and the class token); the file is damaged"
        )
    return side


class AssumedConfigWarning(UserWarning):
    """A checkpoint without a config was built with OpenAI's assumptions (QuickGELU, 64-wide
    heads), which are wrong for most open_clip/LAION models."""


class UnsupportedModel(ValueError):
    """A model whose architecture this port cannot run; the message names what it is."""


# open_clip options that are fine at these values; any other value (or any other key) is refused
_OPEN_CLIP_VISION = {
    "ls_init_value": None, "patch_dropout": 0.0, "attentional_pool": False, "no_ln_pre": False,
    "pool_type": "tok", "final_ln_after_pool": False, "output_tokens": False,
    "input_patchnorm": False, "global_average_pool": False, "timm_model_name": None,
    "act_kwargs": None, "norm_kwargs": None, "attn_pooler_queries": 256, "attn_pooler_heads": 8,
    "n_queries": 256,
}  # fmt: skip
_OPEN_CLIP_TEXT = {
    "ls_init_value": None, "hf_model_name": None, "hf_tokenizer_name": None,
    "hf_model_pretrained": True, "hf_proj_type": "mlp", "hf_pooler_type": "mean_pooler",
    "pool_type": "argmax", "proj_bias": False, "proj_type": "linear", "no_causal_mask": False,
    "embed_cls": False, "pad_id": 0, "output_tokens": False, "final_ln_after_pool": False,
    "act_kwargs": None, "norm_kwargs": None, "tokenizer_kwargs": None,
}  # fmt: skip
_OPEN_CLIP_TOP = {"init_logit_bias": None, "multimodal_cfg": None, "custom_text": None,
                  "cast_dtype": None, "init_logit_scale": None}  # fmt: skip
_OPEN_CLIP_HARMLESS = {"custom_text", "cast_dtype", "init_logit_scale", "patch_dropout",
                       "hf_model_pretrained", "tokenizer_kwargs", "output_tokens", "n_queries",
                       "attn_pooler_queries", "attn_pooler_heads", "hf_proj_type",
                       "hf_pooler_type"}  # fmt: skip
_WHAT = {
    "init_logit_bias": "a SigLIP model (sigmoid loss with a logit bias)",
    "multimodal_cfg": "a CoCa model (a captioning decoder)",
    "timm_model_name": "a timm image tower",
    "hf_model_name": "a Hugging Face text tower",
    "hf_tokenizer_name": "a Hugging Face tokenizer",
    "ls_init_value": "LayerScale",
}


def _refuse(where: str, key: str, value) -> UnsupportedModel:
    what = _WHAT.get(key, f"{where}{key}={value!r}")
    return UnsupportedModel(
        f"this open_clip model uses {what} ({where}{key}={value!r}), which clip-workbench cannot "
        "run; only standard ViT towers with OpenAI's tokenizer are supported"
    )


def _check_options(options: dict, allowed: dict, handled: set, where: str) -> None:
    for key, value in options.items():
        if key in handled or (key in _OPEN_CLIP_HARMLESS and key in allowed):
            continue
        if key not in allowed or value != allowed[key]:
            raise _refuse(where, key, value)


def from_open_clip(config: dict) -> CLIPConfig:
    """The config of an open_clip model: its model_cfg, or a whole open_clip_config.json."""
    preprocess = config.get("preprocess_cfg", {})
    model = config.get("model_cfg", config)
    vision, text = dict(model.get("vision_cfg", {})), dict(model.get("text_cfg", {}))
    if not vision or not text:
        raise ValueError("an open_clip config needs vision_cfg and text_cfg")
    top = {k: v for k, v in model.items() if k not in ("embed_dim", "quick_gelu", "vision_cfg",
                                                        "text_cfg")}  # fmt: skip
    _check_options(top, _OPEN_CLIP_TOP, set(), "")
    sizes = {"image_size", "layers", "width", "head_width", "patch_size", "mlp_ratio"}
    _check_options(vision, _OPEN_CLIP_VISION, sizes, "vision_cfg.")
    sizes = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
    _check_options(text, _OPEN_CLIP_TEXT, sizes, "text_cfg.")
    if isinstance(vision.get("layers"), list | tuple):
        raise _refuse("vision_cfg.", "layers", vision["layers"])  # open_clip's ModifiedResNet
    _check_preprocess(preprocess)
    image_size = vision.get("image_size", 224)
    if isinstance(image_size, list | tuple):
        if len(set(image_size)) != 1:
            raise _refuse("vision_cfg.", "image_size", image_size)
        image_size = image_size[0]
    width, text_width = vision.get("width", 768), text.get("width", 512)
    text_heads = text.get("heads", 8)
    return CLIPConfig(
        embed_dim=model["embed_dim"],
        image_resolution=int(image_size),
        vision_layers=int(vision.get("layers", 12)),
        vision_width=int(width),
        vision_patch_size=int(vision.get("patch_size", 16)),
        context_length=int(text.get("context_length", 77)),
        vocab_size=int(text.get("vocab_size", 49408)),
        transformer_width=int(text_width),
        transformer_layers=int(text.get("layers", 12)),
        vision_head_width=int(vision.get("head_width", 64)),
        transformer_head_width=int(text_width) // int(text_heads),
        vision_mlp_width=int(width * vision.get("mlp_ratio", 4.0)),
        transformer_mlp_width=int(text_width * text.get("mlp_ratio", 4.0)),
        activation="quick_gelu" if model.get("quick_gelu", False) else "gelu",
        image_mean=tuple(preprocess.get("mean", MEAN)),
        image_std=tuple(preprocess.get("std", STD)),
    )


def _check_preprocess(preprocess: dict) -> None:
    allowed = {"interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
    for key, value in preprocess.items():
        if key in allowed and value != allowed[key]:
            raise UnsupportedModel(
                f"this model's preprocessing uses {key}={value!r}; clip-workbench's preprocess "
                "is OpenAI's (bicubic resize of the shortest side, centre crop)"
            )


# transformers' CLIPTextConfig / CLIPVisionConfig defaults: save_pretrained writes only the rest
_HF_TEXT = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8,
            "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 2}  # fmt: skip
_HF_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
              "num_hidden_layers": 12, "image_size": 224, "patch_size": 32,
              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}  # fmt: skip


def from_hf(config: dict, preprocessor: dict | None = None) -> CLIPConfig:
    """The config of a Hugging Face CLIPModel (its config.json), with its preprocessor_config."""
    kind = config.get("model_type", "clip")
    if kind != "clip":
        raise UnsupportedModel(
            f"this Hugging Face model is a {kind!r} (model_type), not a CLIPModel; "
            "clip-workbench runs OpenAI-architecture CLIP models only"
        )
    # older transformers wrote the non-default values under *_config_dict, which CLIPConfig merges
    text = {**_HF_TEXT, **config.get("text_config", {}), **config.get("text_config_dict", {})}
    vision = {
        **_HF_VISION,
        **config.get("vision_config", {}),
        **config.get("vision_config_dict", {}),
    }
    acts = {text["hidden_act"], vision["hidden_act"]}
    if len(acts) > 1 or not acts <= {"quick_gelu", "gelu"}:
        raise UnsupportedModel(f"hidden_act {sorted(acts)}: one of quick_gelu or gelu is supported")
    if text["layer_norm_eps"] != 1e-5 or vision["layer_norm_eps"] != 1e-5:
        raise UnsupportedModel("layer_norm_eps other than 1e-5 is not supported")
    if text["eos_token_id"] not in (2, 49407):  # 2: HF's legacy value, pooling at argmax
        raise UnsupportedModel(
            f"text_config.eos_token_id={text['eos_token_id']}: this port pools the text at its "
            "end-of-text token 49407 (the largest id), as OpenAI's tokenizer makes it"
        )
    preprocessor = preprocessor or {}
    return CLIPConfig(
        embed_dim=int(config.get("projection_dim", 512)),
        image_resolution=int(vision["image_size"]),
        vision_layers=int(vision["num_hidden_layers"]),
        vision_width=int(vision["hidden_size"]),
        vision_patch_size=int(vision["patch_size"]),
        context_length=int(text["max_position_embeddings"]),
        vocab_size=int(text["vocab_size"]),
        transformer_width=int(text["hidden_size"]),
        transformer_layers=int(text["num_hidden_layers"]),
        vision_head_width=vision["hidden_size"] // vision["num_attention_heads"],
        transformer_head_width=text["hidden_size"] // text["num_attention_heads"],
        vision_mlp_width=int(vision["intermediate_size"]),
        transformer_mlp_width=int(text["intermediate_size"]),
        activation=acts.pop(),
        image_mean=tuple(preprocessor.get("image_mean", MEAN)),
        image_std=tuple(preprocessor.get("image_std", STD)),
    )


def open_clip_names() -> list[str]:
    """Names of the open_clip model configs shipped with clip-workbench (e.g. 'ViT-H-14')."""
    return sorted(p.stem for p in OPEN_CLIP_CONFIGS.glob("*.json"))


def read_config(source: "CLIPConfig | dict | str | os.PathLike") -> CLIPConfig:
    """A config from a CLIPConfig, a config dict (open_clip's or Hugging Face's), a JSON file, or
    the name of a shipped open_clip config."""
    if isinstance(source, CLIPConfig):
        return source
    if isinstance(source, dict):
        if "text_config" in source or "vision_config" in source:
            return from_hf(source)
        return from_open_clip(source)
    path = Path(source)
    if not path.is_file() and (OPEN_CLIP_CONFIGS / f"{source}.json").is_file():
        path = OPEN_CLIP_CONFIGS / f"{source}.json"
    if not path.is_file():
        raise ValueError(
            f"config {str(source)!r} is neither a file nor a shipped open_clip config; "
            f"shipped: {', '.join(open_clip_names()) or 'none'}"
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot be read as a JSON config ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config is a JSON object, got {type(data).__name__}")
    return read_config(data)
