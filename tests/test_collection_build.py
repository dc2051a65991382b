"""workbench.collection's build: in-process embedding, resume, refusal, bad items, sources, CLI."""

import importlib
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from helpers import FIXTURES, read_collection, write_clip_ckpt
from PIL import Image

import clip
from workbench import features
from workbench.collection import CollectionError, build
from workbench.demo import shapes

building = importlib.import_module(
    "workbench.collection.build"
)  # the package's `build` is the function
TOLERANCE = 2e-3  # float16 rounding of unit vectors (2^-11 relative) with room for batch order


class Interrupted(Exception):
    """A run stopped from outside."""


def write_images(root, n, start=0):
    """n demo images as PNG and JPEG files in three sub-folders, every third with a caption."""
    paths = {}
    for i, sample in enumerate(shapes.generate("test", n, 0, objects=1, start=start), start):
        folder = root / f"part{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(sample.image).save(path)
        if i % 3 == 0:
            (folder / f"{i:05d}.txt").write_text(sample.caption)
        paths[path.relative_to(root).as_posix()] = (path, sample.caption if i % 3 == 0 else None)
    return paths


@pytest.fixture(scope="module")
def demo():
    return clip.load("demo")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root, write_images(root, 90)


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("collection") / "col"
    summary = build(folder[0], out, shard_size=40, batch_size=16, jit=False, progress=False)
    return out, summary


def test_embeddings_equal_image_and_text_features(folder, built, demo):
    root, paths = folder
    out, summary = built
    model, preprocess = demo
    assert (summary.items, summary.shards, summary.computed, summary.skipped) == (90, 3, 3, 0)
    assert summary.errors == {} and "90 items in 3 shards" in str(summary)
    images, texts, rows = read_collection(out)
    keys = sorted(paths)
    assert [row["key"] for row in rows] == keys  # manifest order is key order
    assert [row["path"] for row in rows] == [str(paths[k][0]) for k in keys]
    assert [row["size"] for row in rows] == [paths[k][0].stat().st_size for k in keys]
    assert all(row["error"] is None for row in rows)
    assert images.dtype == np.float16 and images.shape == (90, model.config.embed_dim)
    expected = features.image_features(
        model, preprocess, [paths[k][0] for k in keys], normalize=True, progress=False
    )
    np.testing.assert_allclose(images.astype(np.float32), expected, atol=TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(images.astype(np.float32), axis=1), 1, atol=2e-3)
    captioned = [i for i, k in enumerate(keys) if paths[k][1] is not None]
    assert [rows[i]["caption"] for i in captioned] == [paths[keys[i]][1] for i in captioned]
    expected_text = features.text_features(
        model, [paths[keys[i]][1] for i in captioned], normalize=True, progress=False
    )
    np.testing.assert_allclose(texts[captioned].astype(np.float32), expected_text, atol=TOLERANCE)
    uncaptioned = sorted(set(range(90)) - set(captioned))
    assert not texts[uncaptioned].any() and all(rows[i]["caption"] is None for i in uncaptioned)
    described = json.loads((out / "collection.json").read_text())
    assert described["model"] == "demo" and described["dtype"] == "float16"
    assert described["fingerprint"]["weights_digest"] == features.weights_digest(model)
    for n in range(3):
        record = json.loads((out / "shards" / f"{n:06d}.json").read_text())
        assert record["fingerprint"] == described["fingerprint"] and record["rows"] == min(
            40, 90 - 40 * n
        )
    assert not list(out.rglob("*.tmp"))


def test_rerun_skips_done_shards(folder, built):
    out, _ = built
    before = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.json")}
    summary = build(folder[0], out, jit=False, progress=False)
    assert (summary.computed, summary.skipped, summary.images) == (0, 3, 0)
    assert before == {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.json")}


def test_resume_after_interruption_recomputes_only_unfinished(folder, tmp_path, monkeypatch):
    out, calls, stop = tmp_path / "col", [], [True]
    real = building.embed_shard

    def failing(out_, shard, *args, **kwargs):
        calls.append(shard)
        if stop[0] and len(calls) == 3:
            raise Interrupted  # as a run stopped inside the third shard
        return real(out_, shard, *args, **kwargs)

    monkeypatch.setattr(building, "embed_shard", failing)
    options = dict(shard_size=20, batch_size=16, jit=False, progress=False)
    with pytest.raises(Interrupted):
        build(folder[0], out, **options)
    done = sorted(p.name for p in (out / "shards").glob("*.json"))
    assert done == ["000000.json", "000001.json"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.json")}
    calls.clear()
    stop[0] = False
    summary = build(folder[0], out, **options)
    assert calls == [2, 3, 4] and (summary.computed, summary.skipped) == (3, 2)
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    # a lost record and a file cut short make exactly those shards partial again
    (out / "shards" / "000001.json").unlink()
    emb = out / "img_emb" / "img_emb_000003.npy"
    emb.write_bytes(emb.read_bytes()[:-100])
    calls.clear()
    summary = build(folder[0], out, **options)
    assert calls == [1, 3] and (summary.computed, summary.skipped) == (2, 3)
    images, _, rows = read_collection(out)
    assert len(rows) == 90 and len({r["key"] for r in rows}) == 90 and np.all(images.any(axis=1))


def test_another_model_is_refused_unless_overwrite(folder, tmp_path):
    out = tmp_path / "col"
    build(folder[0], out, shard_size=100, jit=False, progress=False)
    weights = dict(np.load(FIXTURES / "tiny_vit_weights.npz"))
    weights["token_embedding.weight"] = np.random.default_rng(0).normal(0, 0.02, (49408, 128))
    other = tmp_path / "tiny.ckpt"
    write_clip_ckpt({k: np.asarray(v, np.float16) for k, v in weights.items()}, other)
    with pytest.raises(CollectionError, match="weights_digest.*overwrite"):
        build(folder[0], out, model=other, jit=False, progress=False)
    with pytest.raises(CollectionError, match="dtype: float16 -> float32"):
        build(folder[0], out, dtype="float32", jit=False, progress=False)
    (out / "index").mkdir()  # the old model's index goes with its embeddings
    summary = build(folder[0], out, model=other, shard_size=32, overwrite=True, jit=False,
                    progress=False)  # fmt: skip
    assert (summary.shards, summary.computed) == (3, 3) and not (out / "index").exists()
    assert sorted(p.name for p in (out / "shards").glob("*.json")) == [
        f"{n:06d}.json" for n in range(3)
    ]
    described = json.loads((out / "collection.json").read_text())
    assert described["model"] == str(other)
    model, preprocess = clip.load(other)
    images, _, rows = read_collection(out)
    expected = features.image_features(
        model, preprocess, [r["path"] for r in rows], normalize=True, progress=False
    )
    np.testing.assert_allclose(images.astype(np.float32), expected, atol=TOLERANCE)
    with pytest.raises(CollectionError, match="not a collection folder"):
        build(folder[0], folder[0] / "part0", jit=False, progress=False)


def test_bad_items_are_reported_counted_and_the_rest_embedded(tmp_path, demo):
    root = tmp_path / "images"
    good = write_images(root, 12)
    jpeg = io.BytesIO()
    Image.fromarray(shapes.generate("test", 1, 0, start=50)[0].image).save(jpeg, "JPEG")
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("these are not the pixels you are looking for\n")
    Image.new("RGB", (300, 300), "red").save(root / "large.png")  # over max_pixels below
    summary = build(root, tmp_path / "col", shard_size=5, max_pixels=200 * 200, jit=False,
                    progress=False)  # fmt: skip
    expected = {"decompression bomb": 1, "empty": 1, "not an image": 1, "truncated": 1}
    assert summary.errors == expected and summary.items == 16
    assert "4 (1 decompression bomb, 1 empty, 1 not an image, 1 truncated)" in str(summary)
    images, _, rows = read_collection(tmp_path / "col")
    errors = {r["key"]: r["error"] for r in rows if r["error"] is not None}
    assert sorted(errors) == ["empty.png", "large.png", "notes.jpg", "truncated.jpg"]
    assert errors["large.png"].startswith("decompression bomb: 300x300 pixels exceed")
    assert errors["empty.png"].startswith("empty:") and errors["notes.jpg"].startswith("not an")
    bad = [i for i, r in enumerate(rows) if r["error"] is not None]
    assert not images[bad].any()
    fine = [i for i, r in enumerate(rows) if r["error"] is None]
    model, preprocess = demo
    paths = [good[rows[i]["key"]][0] for i in fine]
    expected = features.image_features(model, preprocess, paths, normalize=True, progress=False)
    np.testing.assert_allclose(images[fine].astype(np.float32), expected, atol=TOLERANCE)
    assert building.status(tmp_path / "col")["errors"] == summary.errors


def test_table_and_webdataset_sources(folder, tmp_path, demo):
    root, paths = folder
    model, preprocess = demo
    keys = sorted(paths)[:20]
    table = tmp_path / "list.csv"  # relative paths, one image twice with two captions
    lines = ["path,caption"] + [
        f"{os.path.relpath(paths[k][0], tmp_path)},caption {k}" for k in keys
    ]
    lines.append(f"{os.path.relpath(paths[keys[0]][0], tmp_path)},another")
    table.write_text("\n".join(lines) + "\n")
    build(table, tmp_path / "from_csv", shard_size=8, jit=False, progress=False)
    images, texts, rows = read_collection(tmp_path / "from_csv")
    first = os.path.relpath(paths[keys[0]][0], tmp_path)
    assert len(rows) == 21 and rows[0]["key"] == first and rows[1]["key"] == first + "#1"
    assert rows[1]["caption"] == "another" and rows[0]["path"] == rows[1]["path"]
    expected = features.image_features(
        model, preprocess, [r["path"] for r in rows], normalize=True, progress=False
    )
    np.testing.assert_allclose(images.astype(np.float32), expected, atol=TOLERANCE)
    shards = tmp_path / "tars"
    shards.mkdir()
    for t in range(2):
        with tarfile.open(shards / f"{t:05d}.tar", "w") as tar:
            for k in keys[t::2]:
                name = f"sample{keys.index(k):03d}"
                tar.add(paths[k][0], arcname=f"{name}{paths[k][0].suffix}")
                caption = io.BytesIO(f"caption {k}".encode())
                info = tarfile.TarInfo(f"{name}.txt")
                info.size = len(caption.getvalue())
                tar.addfile(info, caption)
    build(shards, tmp_path / "from_tar", shard_size=8, jit=False, progress=False)
    images, texts, rows = read_collection(tmp_path / "from_tar")
    assert [r["key"] for r in rows] == sorted(r["key"] for r in rows) and len(rows) == 20
    assert rows[0]["key"] == "00000.tar/sample000" and rows[0]["caption"] == f"caption {keys[0]}"
    order = [keys[int(r["key"].rsplit("sample", 1)[1])] for r in rows]
    expected = features.image_features(
        model, preprocess, [paths[k][0] for k in order], normalize=True, progress=False
    )
    np.testing.assert_allclose(images.astype(np.float32), expected, atol=TOLERANCE)
    from workbench.collection import open_image

    assert open_image(rows[0]["path"]).size == Image.open(paths[order[0]][0]).size


def test_a_grown_source_appends_new_shards(tmp_path):
    root, out = tmp_path / "images", tmp_path / "col"
    write_images(root, 40)
    build(root, out, shard_size=16, jit=False, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*_00000[0-2].*")}
    old = json.loads((out / "manifest.json").read_text())["shards"]
    new = write_images(root, 20, start=100)  # keys that sort among the old ones
    summary = build(root, out, jit=False, progress=False)
    assert (summary.shards, summary.computed, summary.skipped, summary.items) == (5, 2, 3, 60)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"][:3] == old and [s["stop"] for s in manifest["shards"][3:]] == [56, 60]
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    _, _, rows = read_collection(out)
    assert len({r["key"] for r in rows}) == 60
    assert [r["key"] for r in rows[40:]] == sorted(new)  # the new items, sorted, after the old
    with pytest.raises(CollectionError, match="shards of 16 items"):
        build(root, out, shard_size=10, jit=False, progress=False)


def test_command_line_build_and_info(folder, tmp_path, capsys):
    out = tmp_path / "col"
    command = [sys.executable, "-m", "workbench.collection"]
    built = subprocess.run(command + ["build", str(folder[0]), "--out", str(out), "--shard-size",
                                      "50", "--no-progress"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "90 items in 2 shards" in built.stdout and "2 shards computed" in built.stdout
    info = subprocess.run(command + ["info", str(out)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "model: demo (64-d, float16)" in info.stdout and "2 done (90 rows)" in info.stdout
    main = importlib.import_module("workbench.collection.__main__").main
    assert main(["build", str(folder[0]), "--out", str(out), "--dtype", "float32"]) == 1
    refused = capsys.readouterr()
    assert refused.err.startswith("error: ") and "--overwrite" in refused.err
    assert main(["search", str(out), "a photo of a red circle", "-k", "3"]) == 0
    found = capsys.readouterr().out.splitlines()
    assert found[0].startswith("3 results for") and len(found) == 4
    assert main(["index", str(out), "--kind", "hnsw", "--no-progress"]) == 0
    built = capsys.readouterr().out
    report = json.loads((out / "index" / "report.json").read_text())
    assert report["kind"] == "hnsw" and report["ntotal"] == 90
    assert built.startswith("index IDMap2,HNSW32,Flat: 90 vectors from 2 shards")
    assert f"recall@10 {report['recall_at_10']:.3f} at efSearch {report['value']}" in built
    assert main(["index", str(out), "--update", "--no-progress"]) == 0
    assert "90 vectors from 2 shards" in capsys.readouterr().out
    assert main(["index", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
