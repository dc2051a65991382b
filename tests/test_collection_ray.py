"""workbench.collection on a local Ray cluster: same collection as in-process, a worker killed."""

import json
import os

import numpy as np
import pytest
import ray
from helpers import read_collection
from PIL import Image

from workbench.collection import build
from workbench.collection.build import FAULT_ENV


@pytest.fixture(scope="module")
def cluster():
    # On a busy machine Ray's dashboard agent can miss the raylet's 15-s wait for its ports,
    # which aborts the start-up: a longer wait where Ray reads it, and a second attempt.
    saved = os.environ.get("RAY_agent_register_timeout_ms")
    os.environ["RAY_agent_register_timeout_ms"] = "120000"
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                     log_to_driver=False)  # fmt: skip
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_agent_register_timeout_ms")
    else:
        os.environ["RAY_agent_register_timeout_ms"] = saved


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """2,000 tiny JPEG and PNG images of random blocks, in 20 folders."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(2000):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8).repeat(6, 0).repeat(6, 1)
        folder = root / f"{i % 20:02d}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(blocks).save(folder / f"{i:05d}.{'jpg' if i % 2 else 'png'}")
    return root


OPTIONS = dict(shard_size=250, batch_size=64, jit=True, progress=False)


@pytest.fixture(scope="module")
def local(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "col"
    build(images, out, **OPTIONS)
    embeddings, _, rows = read_collection(out)
    return embeddings, rows


def test_ray_build_equals_in_process_build(cluster, images, local, tmp_path):
    summary = build(images, tmp_path / "col", engine="ray", workers=2, **OPTIONS)
    assert (summary.items, summary.shards, summary.computed, summary.pending) == (2000, 8, 8, 0)
    embeddings, _, rows = read_collection(tmp_path / "col")
    assert rows == local[1]
    np.testing.assert_allclose(
        embeddings.astype(np.float32), local[0].astype(np.float32), atol=1e-3
    )
    pids = {json.loads(p.read_text())["pid"] for p in (tmp_path / "col" / "shards").glob("*.json")}
    assert len(pids) == 2  # two actors shared the shards


def test_a_killed_worker_is_replaced_and_every_item_embedded_once(cluster, images, local, tmp_path):
    subset = tmp_path / "images"  # 500 of the images, linked under the same keys
    for path in images.glob("0[0-4]/*"):
        (subset / path.parent.name).mkdir(parents=True, exist_ok=True)
        (subset / path.parent.name / path.name).hardlink_to(path)
    marker = tmp_path / "kill-me"
    marker.touch()  # the first actor to start a shard removes it and exits on the spot
    summary = build(subset, tmp_path / "col", engine="ray", workers=2,
                    runtime_env={"env_vars": {FAULT_ENV: str(marker)}},
                    **{**OPTIONS, "shard_size": 100})  # fmt: skip
    assert not marker.exists()
    assert (summary.computed, summary.pending, summary.errors) == (5, 0, {})
    embeddings, _, rows = read_collection(tmp_path / "col")
    expected = [i for i, r in enumerate(local[1]) if r["key"] < "05/"]
    assert [r["key"] for r in rows] == [local[1][i]["key"] for i in expected]  # each once
    np.testing.assert_allclose(embeddings.astype(np.float32), local[0][expected].astype(np.float32),
                               atol=1e-3)  # fmt: skip
    pids = {json.loads(p.read_text())["pid"] for p in (tmp_path / "col" / "shards").glob("*.json")}
    assert len(pids) == 2 and not list((tmp_path / "col").rglob("*.tmp"))
