"""Engines beyond this process: Ray actors and msrun ranks, each running build.ShardWorker.

- Ray (optional): one actor per worker (1 CPU each), the model loaded once per actor; shards go
  to actors as they free up. An actor that dies is restarted by Ray and its task retried
  (`max_restarts`, `max_task_retries`); a shard that still fails is handed out again, up to
  `retries` times. `address` joins an existing cluster (`"auto"`, or `ray://host:10001`); every
  node must see the source and the output folder at the same paths (a shared file system).
- msrun (MindSpore's launcher): each process reads its role and rank from msrun's environment
  (`MS_ROLE` is `MS_SCHED` or `MS_WORKER`, `RANK_ID` the global rank, `MS_WORKER_NUM` the world
  size; msrun also sets `RANK_SIZE`, `MS_NODE_ID`, `DEVICE_ID`, `MS_SCHED_HOST`/`MS_SCHED_PORT`).
  Shard i is rank i % world's; the scheduler process does no work, and nothing is communicated:
  every rank lists the source and plans the same manifest itself. Outside msrun, `launch_msrun`
  plans the folder, then runs msrun with local ranks on this machine and waits for them.
"""

import os
import shutil
import subprocess
import sys
import time
from collections import Counter, deque
from pathlib import Path

from tqdm.auto import tqdm

from .build import (
    BuildSummary,
    CollectionError,
    ShardWorker,
    WorkerOptions,
    shard_done,
    summarize,
)
from .manifest import Manifest, read_json


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError(
            "engine='ray' needs Ray, which is not installed: pip install 'ray[default]' (or use "
            "engine='local' or 'msrun')"
        ) from None
    return ray


def run_ray(
    options: WorkerOptions,
    plan: Manifest,
    todo: list[int],
    *,
    workers: int | None = None,
    address: str | None = None,
    runtime_env: dict | None = None,
    retries: int = 3,
    progress: bool = True,
) -> list[dict]:
    """Embed the shards todo on Ray actors; their records, in completion order."""
    ray = _ray()
    if not todo:
        return []
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor_class = ray.remote(num_cpus=1, max_restarts=retries, max_task_retries=retries)
        actor_class = actor_class(ShardWorker).options(runtime_env=runtime_env)
        actors = [actor_class.remote(options) for _ in range(min(count, len(todo)))]
        queue, running, failures, records = deque(todo), {}, Counter(), []

        def submit(actor) -> None:
            shard = queue.popleft()
            running[actor.embed.remote(shard, plan.shard_items(shard))] = (actor, shard)

        total = sum(plan.shards[s][1] - plan.shards[s][0] for s in todo)
        with tqdm(total=total, unit="image", desc="embedding (ray)", disable=not progress) as bar:
            for actor in actors:
                if queue:
                    submit(actor)
            while running:
                [ref], _ = ray.wait(list(running), num_returns=1)
                actor, shard = running.pop(ref)
                try:
                    records.append(ray.get(ref))
                    bar.update(records[-1]["rows"])
                except ray.exceptions.RayError as err:
                    failures[shard] += 1
                    if failures[shard] > retries:
                        raise CollectionError(
                            f"shard {shard} failed {failures[shard]} times on Ray workers; the "
                            f"last error: {err}"
                        ) from err
                    queue.appendleft(shard)
                    if isinstance(err, ray.exceptions.RayActorError):  # out of restarts
                        ray.kill(actor)
                        actor = actor_class.remote(options)
                if queue:
                    submit(actor)
        return records
    finally:
        if started:
            ray.shutdown()


def msrun_role() -> tuple[str, int, int] | None:
    """("scheduler" | "worker", rank, world size) under msrun, None outside it."""
    role = os.environ.get("MS_ROLE")
    if role is None:
        return None
    world = int(os.environ.get("MS_WORKER_NUM") or os.environ.get("RANK_SIZE") or 1)
    if role == "MS_SCHED":
        return "scheduler", -1, world
    if role == "MS_WORKER":
        return "worker", int(os.environ.get("RANK_ID", 0)), world
    raise CollectionError(f"MS_ROLE={role} is neither msrun's MS_WORKER nor MS_SCHED")


def msrun_executable() -> str:
    """The msrun next to this Python, else the one on PATH."""
    beside = Path(sys.executable).with_name("msrun")
    found = str(beside) if beside.exists() else shutil.which("msrun")
    if found is None:
        raise CollectionError(
            "msrun is not installed; it comes with MindSpore: pip install mindspore"
        )
    return found


def launch_msrun(
    source,
    out: Path,
    options: WorkerOptions,
    worker: ShardWorker,
    plan: Manifest,
    *,
    workers: int,
    kind: str | None,
    master_port: int,
    started: float,
) -> BuildSummary:
    """Run `workers` msrun ranks on this machine for the planned folder, wait; the summary."""
    print_ = worker.fingerprint
    rows = [b - a for a, b in plan.shards]
    before = {s for s, n in enumerate(rows) if shard_done(out, s, n, print_)}
    script = Path(__file__).with_name("__main__.py")
    arguments = [
        str(script),
        "build",
        str(source),
        "--model",
        options.model,
        "--out",
        str(out),
        "--engine",
        "msrun",
        "--shard-size",
        str(plan.shard_size),
        "--batch-size",
        str(options.batch_size),
        "--dtype",
        options.dtype,
        "--no-progress",
    ]
    for flag, value in (
        ("--kind", kind),
        ("--max-pixels", options.max_pixels),
        ("--threads", options.threads),
        ("--device", options.device),
    ):
        if value is not None:
            arguments += [flag, str(value)]
    arguments += ["--jit"] if options.jit else []
    logs = out / "logs" / "msrun"
    command = [
        msrun_executable(),
        f"--worker_num={workers}",
        f"--local_worker_num={workers}",
        f"--master_port={master_port}",
        "--join=True",
        f"--log_dir={logs}",
        *arguments,
    ]
    # msrun starts each rank as `python script ...`: this interpreter must be the `python` found
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    environment = {**os.environ, "PATH": path}
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise CollectionError(
            f"msrun exited with status {result.returncode}; the ranks' logs are in {logs}:\n"
            f"{(result.stdout + result.stderr)[-3000:]}"
        )
    after = {s for s, n in enumerate(rows) if shard_done(out, s, n, print_)}
    records = [read_json(out / "shards" / f"{s:06d}.json") for s in sorted(after - before)]
    summary = summarize(out, plan, print_, records, len(before), time.perf_counter() - started)
    if summary.pending:
        raise CollectionError(f"{summary.pending} shards were not done; see {logs}:\n{summary}")
    return summary
