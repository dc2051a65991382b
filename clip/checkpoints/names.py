"""Map the tensor names of each convention to OpenAI's canonical state-dict names.

Hugging Face `CLIPModel` names follow transformers' `convert_clip_original_pytorch_to_hf.py` (the
script that made the hub's openai/clip-vit-* weights from OpenAI's), read backwards. mindcv's
`examples/clip/ckpt_transform.py` renames LayerNorm and BatchNorm weight/bias to gamma/beta, running
statistics to moving_mean/moving_variance and `token_embedding.weight` to `.embedding_table`.
"""

import os
import re

import numpy as np

from .common import CheckpointError

_HF = [
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
]
_HF_TRANSPOSED = {
    "visual_projection.weight": "visual.proj",
    "text_projection.weight": "text_projection",
}
_QKV = re.compile(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_MINDCV = {".gamma": ".weight", ".beta": ".bias", ".embedding_table": ".weight",
           ".moving_mean": ".running_mean", ".moving_variance": ".running_var"}  # fmt: skip
# not weights: OpenAI's TorchScript keeps the model's sizes as tensors, mindcv its causal mask,
# torch's BatchNorm a step counter
_DROPPED = re.compile(
    r"^(input_resolution|context_length|vocab_size)$|\.(attn_mask|position_ids|num_batches_tracked)$"
)


def naming(names) -> str:
    """The naming convention of a set of tensor names: 'OpenAI', 'Hugging Face' or 'mindcv'."""
    names = list(names)
    if any(n.startswith(("text_model.", "vision_model.")) for n in names):
        return "Hugging Face"
    if any(n.endswith(tuple(_MINDCV)) for n in names):
        return "mindcv"
    return "OpenAI"


def _from_hf(tensors: dict[str, np.ndarray], path) -> dict[str, np.ndarray]:
    out, qkv = {}, {}
    for name, array in tensors.items():
        if name in _HF_TRANSPOSED:
            out[_HF_TRANSPOSED[name]] = array.T
            continue
        for pattern, repl in _HF:
            name = re.sub(pattern, repl, name)
        if match := _QKV.match(name):
            stem, part, kind = match.groups()
            qkv.setdefault(f"{stem}.attn.in_proj_{kind}", {})[part] = array
        else:
            out[name] = array
    for name, parts in qkv.items():
        if len(parts) != 3:
            missing = ", ".join(f"{p}_proj" for p in "qkv" if p not in parts)
            raise CheckpointError(f"{path}: {name} lacks its {missing} part")
        out[name] = np.concatenate([parts["q"], parts["k"], parts["v"]])
    return out


def _from_mindcv(name: str) -> str:
    for old, new in _MINDCV.items():
        if name.endswith(old):
            return name[: -len(old)] + new
    return name


def canonical(
    tensors: dict[str, np.ndarray], path: str | os.PathLike = "state dict"
) -> dict[str, np.ndarray]:
    """The tensors under OpenAI's names: any convention mapped, a `module.` prefix stripped, what
    is not a weight dropped, an older (1,) logit_scale made a scalar. The one place a state dict
    is cleaned up; path names it in errors."""
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    if any(k.startswith("text.transformer.") for k in tensors):  # open_clip's CustomTextCLIP
        tensors = {k.removeprefix("text."): v for k, v in tensors.items()}
    convention = naming(tensors)
    if convention == "Hugging Face":
        tensors = _from_hf(tensors, path)
    elif convention == "mindcv":
        tensors = {_from_mindcv(k): v for k, v in tensors.items()}
    tensors = {k: v for k, v in tensors.items() if not _DROPPED.search(k)}
    if "logit_scale" in tensors and np.shape(tensors["logit_scale"]) == (1,):  # older files
        tensors["logit_scale"] = np.reshape(tensors["logit_scale"], ())
    return tensors
