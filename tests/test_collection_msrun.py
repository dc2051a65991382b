"""workbench.collection under msrun: 2 local CPU ranks build what the local engine builds."""

import json
import os

import numpy as np
from helpers import read_collection
from PIL import Image

from workbench.collection import build
from workbench.collection.engines import msrun_role

PORT = 8118  # msrun's scheduler port for this test module


def test_msrun_ranks_build_the_local_collection(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(160):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8).repeat(6, 0).repeat(6, 1)
        Image.fromarray(blocks).save(tmp_path / f"{i:04d}.{'jpg' if i % 2 else 'png'}")
    (tmp_path / "0000.txt").write_text("a caption")  # text embeddings too
    options = dict(shard_size=40, batch_size=32, jit=False, progress=False)
    local = build(tmp_path, tmp_path.parent / f"{tmp_path.name}-local", **options)
    summary = build(tmp_path, tmp_path.parent / f"{tmp_path.name}-msrun", engine="msrun",
                    workers=2, master_port=PORT, **options)  # fmt: skip
    assert (summary.shards, summary.computed, summary.pending) == (local.shards, 4, 0)
    out = tmp_path.parent / f"{tmp_path.name}-msrun"
    embeddings, _, rows = read_collection(out)
    expected, _, expected_rows = read_collection(tmp_path.parent / f"{tmp_path.name}-local")
    assert rows == expected_rows
    np.testing.assert_allclose(
        embeddings.astype(np.float32), expected.astype(np.float32), atol=1e-3
    )
    texts = np.load(out / "text_emb" / "text_emb_000000.npy")
    local_texts = np.load(
        tmp_path.parent / f"{tmp_path.name}-local" / "text_emb" / "text_emb_000000.npy"
    )
    np.testing.assert_allclose(texts.astype(np.float32), local_texts.astype(np.float32), atol=1e-3)
    records = [json.loads((out / "shards" / f"{n:06d}.json").read_text()) for n in range(4)]
    assert records[0]["pid"] == records[2]["pid"] != records[1]["pid"] == records[3]["pid"]
    logs = sorted(p.name for p in (out / "logs" / "msrun").iterdir())
    assert logs == ["scheduler.log", "worker_0.log", "worker_1.log"]
    again = build(tmp_path, out, engine="msrun", workers=2, master_port=PORT, **options)
    assert (again.computed, again.skipped) == (0, 4)


def test_msrun_environment_gives_role_rank_and_world(monkeypatch):
    for name in ("MS_ROLE", "RANK_ID", "MS_WORKER_NUM", "RANK_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert msrun_role() is None
    monkeypatch.setenv("MS_WORKER_NUM", "4")  # as msrun sets them (checked with msrun 2.10)
    monkeypatch.setenv("MS_ROLE", "MS_SCHED")
    assert msrun_role() == ("scheduler", -1, 4)
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    monkeypatch.setenv("RANK_ID", "3")
    assert msrun_role() == ("worker", 3, 4)
    assert "MS_ROLE" in os.environ
