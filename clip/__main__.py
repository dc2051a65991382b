"""Command line: `python -m clip predict|convert|info` (see `python -m clip -h`).

Each subcommand is a parser added in `build_parser` with `set_defaults(run=function)`; the function
takes the parsed arguments. Errors about the input print one line and exit with status 1.
"""

import argparse
import os
import sys
from pathlib import Path
from string import Formatter

import numpy as np
from mindspore import Tensor, ops
from PIL import Image

from . import load, tokenize
from .checkpoints import FORMATS, model_files, read_checkpoint, write_ckpt
from .config import CLIPConfig, model_config, read_config
from .model import check_fits, non_finite


def _prompts(template: str, labels: list[str]) -> list[str]:
    """The template with each label in its one `{}`; literal braces are written `{{` and `}}`."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in Formatter().parse(template)]
    except ValueError:  # an unmatched brace
        fields = None
    if fields is None or [f for f in fields if f[0] is not None] != [("", "", None)]:
        raise ValueError(
            f"--template must contain {{}} where a label goes, exactly once and with nothing in "
            f'it (write literal braces as {{{{ and }}}}), got "{template}"'
        )
    return [template.format(label) for label in labels]


def predict(args: argparse.Namespace) -> None:
    """Print the zero-shot probability of each label for an image, most likely first."""
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if len(labels) < 2:
        raise ValueError(f'--labels needs at least two comma-separated labels, got "{args.labels}"')
    texts = _prompts(args.template, labels)
    try:
        image = Image.open(args.image).convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:  # a bomb is not an OSError
        raise OSError(f"cannot read image {args.image}: {err}") from err
    model, preprocess = load(args.model)
    try:
        tokens = tokenize(texts, context_length=model.context_length)
    except RuntimeError:
        for text in texts:  # one at a time, to name the prompt that does not fit
            try:
                tokenize(text, context_length=model.context_length)
            except RuntimeError:
                shown = text if len(text) <= 80 else f"{text[:60]}...{text[-10:]}"
                raise ValueError(
                    f'the prompt "{shown}" is too long for context length '
                    f"{model.context_length} of model {args.model}; shorten its label or --template"
                ) from None
        raise
    logits, _ = model(Tensor(preprocess(image)[None]), tokens)
    probs = ops.softmax(logits, axis=-1).asnumpy()[0]
    width = max(map(len, labels))
    for i in np.argsort(-probs, kind="stable"):
        print(f"{labels[i]:<{width}}  {100 * probs[i]:5.1f}%")


def _check_destination(src: str, dst: str, force: bool) -> None:
    """Refuse to write over the source (whatever --force says) or, without --force, any file."""
    if not os.path.lexists(dst):
        return
    weights, config = model_files(src)
    sources = [Path(src), weights, *([config] if config else [])]
    if os.path.exists(dst) and any(p.exists() and os.path.samefile(p, dst) for p in sources):
        raise ValueError(f"{dst}: is the source itself; write the .ckpt to another path")
    if os.path.isdir(dst):
        raise ValueError(f"{dst}: is a directory; give the path of the .ckpt file to write")
    if not force:
        raise ValueError(f"{dst}: exists; pass --force to replace it, or choose another path")


def convert(args: argparse.Namespace) -> None:
    """Any readable checkpoint or model folder -> a MindSpore .ckpt under OpenAI's names, holding
    the model's config when the source has one (or --config gives it)."""
    _check_destination(args.src, args.dst, args.force)
    checkpoint = read_checkpoint(args.src)
    config = read_config(args.config) if args.config else checkpoint.config
    try:
        check_fits(checkpoint.state_dict, config)
    except ValueError as err:
        raise ValueError(f"{args.src}: {err}") from err
    stored = None if config is None else config.to_json()
    write_ckpt(checkpoint.state_dict, args.dst, fp16=args.fp16, config=stored)
    dtype = "float16" if args.fp16 else "stored dtypes"
    kept = "with its config" if config else "no config (OpenAI's assumptions when loaded)"
    print(f"wrote {args.dst}: {len(checkpoint.state_dict)} tensors, {dtype}, {kept}")


def describe(state_dict: dict, config: CLIPConfig | None = None) -> list[str]:
    """Lines describing a CLIP's architecture: its config, else what the shapes give."""
    assumed = config is None
    config = model_config(state_dict) if assumed else config
    width, layers = config.vision_width, config.vision_layers
    if config.resnet:
        vision = f"ResNet, width {width}, layers {layers}, heads {config.vision_heads}"
    else:
        patch = config.vision_patch_size
        vision = f"ViT, width {width}, layers {layers}, heads {config.vision_heads}, patch {patch}"
    text = f"width {config.transformer_width}, layers {config.transformer_layers}"
    return [
        f"vision: {vision}",
        f"text: transformer, {text}, heads {config.transformer_heads}",
        f"embed dim: {config.embed_dim}",
        f"resolution: {config.image_resolution} px",
        f"context length: {config.context_length}, vocabulary: {config.vocab_size}",
        f"activation: {config.activation}" + (" (assumed, as OpenAI's: no config)" * assumed),
    ]


def info(args: argparse.Namespace) -> None:
    """Print a checkpoint's format, architecture, parameter count, resolution and dtypes."""
    checkpoint = read_checkpoint(args.path)
    state_dict = checkpoint.state_dict
    try:
        architecture = describe(state_dict, checkpoint.config)
    except ValueError as err:  # still worth showing what the file holds
        architecture = [f"architecture: {err}"]
    params = sum(a.size for a in state_dict.values() if np.issubdtype(a.dtype, np.floating))
    dtypes = ", ".join(f"{name} ({n} tensors)" for name, n in checkpoint.dtypes.most_common())
    size = Path(args.path).stat().st_size / 2**20
    lines = [f"file: {args.path} ({size:.1f} MiB)"]
    lines += [f"format: {FORMATS[checkpoint.format]}, {checkpoint.naming} names", *architecture]
    lines += [f"parameters: {params:,} in {len(state_dict)} tensors", f"dtypes: {dtypes}"]
    if bad := non_finite(state_dict):
        shown = ", ".join(bad[:5]) + ", ..." * (len(bad) > 5)
        lines.append(f"warning: {len(bad)} tensors hold NaN or Inf values: {shown}")
    print("\n".join(lines))


def export_model(args: argparse.Namespace) -> None:
    """Write the image and/or text encoder as a MindIR or ONNX graph (mindspore.export)."""
    from .export import export

    model, _ = load(args.model)
    for path, seconds in export(model, args.out, args.format, args.part, args.batch):
        batch = "dynamic batch" if args.batch is None else f"batch {args.batch}"
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {batch}, {seconds:.1f} s)")


def build_parser() -> argparse.ArgumentParser:
    """The `python -m clip` parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="python -m clip", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("predict", help=predict.__doc__, description=predict.__doc__)
    sub.add_argument("image", help="image file (any format PIL reads)")
    sub.add_argument("--labels", required=True, help='comma-separated, e.g. "a dog,a cat"')
    sub.add_argument("--model", default="demo", help="model name or checkpoint path (demo)")
    sub.add_argument("--template", default="a photo of a {}.", help="prompt; {} is the label")
    sub.set_defaults(run=predict)
    sub = commands.add_parser("convert", help=convert.__doc__, description=convert.__doc__)
    sub.add_argument("src", help="checkpoint: .pt, .bin, .safetensors, .ckpt or .npz")
    sub.add_argument("dst", help="MindSpore .ckpt to write")
    sub.add_argument("--fp16", action="store_true", help="store floating-point weights as float16")
    sub.add_argument("--config", help="architecture: an open_clip model name or a config file")
    sub.add_argument("--force", action="store_true", help="replace dst if it exists")
    sub.set_defaults(run=convert)
    sub = commands.add_parser("info", help=info.__doc__, description=info.__doc__)
    sub.add_argument("path", help="checkpoint file")
    sub.set_defaults(run=info)
    sub = commands.add_parser("export", help=export_model.__doc__, description=export_model.__doc__)
    sub.add_argument("model", help="model name or checkpoint path")
    sub.add_argument("out", help="output path; with --part both, OUT_image.* and OUT_text.*")
    sub.add_argument("--format", choices=["mindir", "onnx"], default="mindir")
    sub.add_argument("--part", choices=["image", "text", "both"], default="both")
    sub.add_argument(
        "--batch", type=int, help="fixed batch size (needed for onnx); default dynamic"
    )
    sub.set_defaults(run=export_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; 0 on success, 1 on bad input (reported in one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
