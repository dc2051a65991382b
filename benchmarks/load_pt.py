"""Time to read a full-size ViT-B/32 .pt (TorchScript, float16, random weights) without torch.

The file is made in a temporary directory by tests/fixtures/gen_checkpoints.py --vit-b-32, run in
the reference environment (.venv-ref, which has torch); without it the benchmark says so and stops.
Target: read_state_dict <= 3 s on this machine.
Run: .venv/bin/python benchmarks/load_pt.py [--repeat N]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / ".venv-ref" / "bin" / "python"
TARGET = 3.0


def timed(function, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed reads (median reported)")
    args = parser.parse_args()
    if not REFERENCE.exists():
        print(f"skipped: {REFERENCE} is missing; `make .venv-ref/.installed` builds it")
        return 0
    sys.path.insert(0, str(REPO))
    import clip
    from clip.checkpoints import read_state_dict

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ViT-B-32.pt"
        script = REPO / "tests" / "fixtures" / "gen_checkpoints.py"
        made, done = timed(subprocess.run, [REFERENCE, script, "--vit-b-32", path])
        if done.returncode:
            print(f"skipped: {script.name} could not make the file (exit {done.returncode})")
            return 0
        print(f"made {path.name}: {path.stat().st_size / 2**20:.0f} MiB in {made:.1f} s")
        reads = []
        for _ in range(args.repeat):
            seconds, state_dict = timed(read_state_dict, path)
            reads.append(seconds)
        params = sum(v.size for v in state_dict.values())
        median = statistics.median(reads)
        print(f"read_state_dict: median {median:.2f} s of {args.repeat} (min {min(reads):.2f} s),")
        print(f"  {len(state_dict)} tensors, {params / 1e6:.1f} M parameters; target <= {TARGET} s")
        loaded, _ = timed(clip.load, path)
        print(f"clip.load (read + build the MindSpore model): {loaded:.2f} s")
    return 0 if median <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
