"""This project against OpenAI's PyTorch CLIP on the same CPU, in one invocation: ratios.

Each measurement runs in a fresh worker process (so its peak memory is its own), alternating
between the implementations for --rounds rounds; the median time per call is kept. The table gives
each figure's median over rounds and, as the ratio, the median of the round-by-round ratios against
the reference with their range: a host's speed drifts between processes. The reference
runs in .venv-bench (torch 2.13.0 CPU, OpenAI's model.py and simple_tokenizer.py); .venv-ref writes
the TorchScript .pt. `make bench` builds both.
Run: make bench   (or .venv/bin/python benchmarks/speed.py [--rounds N] [--quick])
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from host import describe

REPO = Path(__file__).resolve().parents[1]
PYTHONS = {
    "mindspore": REPO / ".venv" / "bin" / "python",
    "mindspore-jit": REPO / ".venv" / "bin" / "python",
    "torch": REPO / ".venv-bench" / "bin" / "python",
}
MAKER = REPO / ".venv-ref" / "bin" / "python"  # torch 2.14 with torchvision: writes the .pt
WORKER = Path(__file__).resolve().parent / "speed_worker.py"
# (group, implementations compared); each group is one worker process per implementation.
GROUPS = {
    "image ViT-B/32": ["mindspore", "mindspore-jit", "torch"],
    "image RN50": ["mindspore", "mindspore-jit", "torch"],
    "text ViT-B/32": ["mindspore", "mindspore-jit", "torch"],
    "tokenizer": ["mindspore", "torch"],
    "load ViT-B/32 .pt": ["mindspore", "torch"],
    "files ViT-B/32": ["mindspore", "mindspore-jit", "torch"],
}
JPEGS = 256  # end to end from files: half 640x480, half 500x375, as photos come


def random_weights(workdir: Path, names: tuple = ("ViT-B-32", "RN50")) -> dict[str, Path]:
    """Random fp16 weights (OpenAI's initialisation, written by the reference tooling) as
    workdir/NAME.npz, and ViT-B-32.pt, its TorchScript archive; the .npz paths."""
    from clip.checkpoints import read_state_dict

    written = {"ViT-B-32": ("--vit-b-32", "ViT-B-32.pt"), "RN50": ("--rn50", "RN50-state.pt")}
    command = [MAKER, REPO / "tests/fixtures/gen_checkpoints.py"]
    for name in names:
        command += [written[name][0], workdir / written[name][1]]
    subprocess.run(command, check=True)
    weights = {}
    for name in names:
        state = read_state_dict(workdir / written[name][1])
        weights[name] = workdir / f"{name}.npz"
        np.savez(weights[name], **{k: v.astype(np.float16) for k, v in state.items()})
    return weights


def prepare(workdir: Path) -> None:
    """Random weights of ViT-B/32 and RN50, CIFAR-100 prompts and JPEG files in workdir."""
    import clip
    from workbench.prompts import classes

    random_weights(workdir)
    prompts = [f"a photo of a {c}." for c in classes("CIFAR100")]
    (workdir / "prompts.json").write_text(json.dumps(prompts))
    np.save(workdir / "tokens.npy", clip.tokenize(prompts).asnumpy())
    write_jpegs(workdir / "jpeg", JPEGS)


def write_jpegs(folder: Path, count: int) -> None:
    """Photo-like JPEGs (smooth gradients with shapes, quality 90) of two common sizes."""
    from PIL import Image, ImageDraw

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        width, height = (640, 480) if i % 2 else (500, 375)
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(0, 255, 3)
        pixels = ramp + np.linspace(0, 1, height)[:, None, None] * rng.uniform(0, 255, 3)
        image = Image.fromarray(np.clip(pixels / 2, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, width), rng.integers(0, height)
            r = int(rng.integers(10, 120))
            draw.ellipse(
                (x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3))
            )
        image.save(folder / f"{i:04d}.jpg", quality=90)


def run_worker(implementation: str, group: str, workdir: Path, quick: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    python = MAKER if group.startswith("files") and implementation == "torch" else None
    command = [python or PYTHONS[implementation], WORKER, implementation, group, workdir]
    done = subprocess.run(
        command + (["--quick"] if quick else []), env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"{implementation} {group} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def paired_ratios(case: str, ours: list[float], reference: list[float]) -> list[float]:
    """Round by round, this project's figure against the reference's of the same round (> 1:
    better); pairs taken minutes apart, so a host's slow spell weighs on both sides."""
    if len(ours) != len(reference):
        raise ValueError(f"{case}: {len(ours)} rounds against the reference's {len(reference)}")
    higher_is_better = case.endswith("/s")
    return [o / r if higher_is_better else r / o for o, r in zip(ours, reference, strict=True)]


def table(results: dict) -> str:
    """Markdown rows: medians over rounds, and the median of the paired ratios with their range."""
    lines = ["| measurement | torch | mindspore | ratio (range) | mindspore jit | ratio (range) |"]
    lines.append("|---|---|---|---|---|---|")
    for (group, case), by_impl in results.items():
        ref = by_impl["torch"]
        cells = [f"{group} {case}", _number(statistics.median(ref))]
        for impl in ("mindspore", "mindspore-jit"):
            if impl in by_impl:
                ratios = paired_ratios(case, by_impl[impl], ref)
                spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
                cells += [
                    _number(statistics.median(by_impl[impl])),
                    f"{statistics.median(ratios):.2f}x{spread}",
                ]
            else:
                cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per group")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions per case")
    parser.add_argument("--groups", nargs="*", default=list(GROUPS), choices=list(GROUPS))
    args = parser.parse_args()
    if not PYTHONS["torch"].exists():
        print(f"{PYTHONS['torch']} is missing: `make bench` builds the reference environment")
        return 2
    reference = subprocess.run(
        [PYTHONS["torch"], "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    header = f"{describe('mindspore', 'numpy')}; reference torch {reference}"
    print(header, flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepare(workdir)
        for group in args.groups:
            for _ in range(args.rounds):
                for implementation in GROUPS[group]:
                    measured = run_worker(implementation, group, workdir, args.quick)
                    print(f"{group:20} {implementation:14} {measured}", flush=True)
                    for case, value in measured.items():
                        results.setdefault((group, case), {}).setdefault(implementation, [])
                        results[(group, case)][implementation].append(value)
    print(f"\n{header}")
    print(f"ratio > 1: this project is better (faster, or less memory); {args.rounds} rounds\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
