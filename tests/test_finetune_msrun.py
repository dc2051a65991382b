"""Data-parallel fine-tuning under MindSpore's msrun: 2 CPU workers x batch B = 1 worker x 2B."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import clip
import workbench.finetune as ft
from workbench.demo import shapes
from workbench.demo import train as demo_train

ROOT = Path(__file__).resolve().parents[1]
PORT = "8128"
# Both runs do the same arithmetic in another order (the all-reduce adds two processes' gradient
# sums), so they agree to float32 rounding, not bitwise; Adam divides by the gradient's magnitude,
# so rounding in a near-zero gradient entry can move that weight by up to lr in a step.
LR = 1e-4
LOSS_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 3 * LR


def test_two_msrun_workers_match_one_worker_with_the_whole_batch(tmp_path):
    samples = shapes.generate("train", 20, seed=6)
    (tmp_path / "img").mkdir()
    for i, s in enumerate(samples):
        Image.fromarray(s.image).save(tmp_path / "img" / f"{i}.png")
    rows = "".join(f'img/{i}.png,"{s.caption}"\n' for i, s in enumerate(samples))
    (tmp_path / "pairs.csv").write_text("path,caption\n" + rows)
    config = dataclasses.replace(demo_train.DEMO, vision_layers=1, transformer_layers=1)
    model = clip.CLIP(config)
    demo_train.initialise(model, 0)
    ft.save(model, tmp_path / "start.ckpt")
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip

    def run(name: str, launcher: list[str]) -> dict:
        command = [*launcher, "python", "-m", "workbench.finetune", "--data", "pairs.csv",
                   "--model", "start.ckpt", "--out", f"{name}.ckpt", "--steps", "3",
                   "--batch-size", "8", "--val-fraction", "0.2", "--lr", str(LR), "--warmup", "1",
                   "--history", f"{name}.json"]  # fmt: skip
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=400)  # fmt: skip
        logs = "".join(p.read_text()[-3000:] for p in (tmp_path / "logs").glob("worker_*.log"))
        assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:], logs)
        return json.loads((tmp_path / f"{name}.json").read_text())

    msrun = shutil.which("msrun", path=env["PATH"])
    two = run("two", [msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={PORT}",
                      "--join=True", "--log_dir=logs"])  # fmt: skip
    one = run("one", [])
    assert len(two["loss"]) == len(one["loss"]) == 3
    assert np.allclose(two["loss"], one["loss"], rtol=0, atol=LOSS_TOLERANCE), (two, one)
    assert two["loss"][0] != two["loss"][-1]
    a, _ = clip.load(tmp_path / "one.ckpt")
    b, _ = clip.load(tmp_path / "two.ckpt")
    for (name, p), (_, q) in zip(a.parameters_and_names(), b.parameters_and_names(), strict=True):
        assert np.abs(p.asnumpy() - q.asnumpy()).max() <= WEIGHT_TOLERANCE, name
