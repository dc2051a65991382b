"""Fine-tuning: loss, AdamW groups, locked towers, accumulation, resume, WiSE-FT, data, CLI."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import clip
import workbench.finetune as ft
from clip.transform import transform
from workbench.demo import shapes
from workbench.demo import train as demo_train

TINY = dataclasses.replace(
    demo_train.DEMO, vision_width=64, vision_layers=2, transformer_width=64, transformer_layers=2
)
PREPROCESS = transform(shapes.SIZE)
ROOT = Path(__file__).resolve().parents[1]


def tiny(seed: int = 0) -> clip.CLIP:
    model = clip.CLIP(TINY)
    demo_train.initialise(model, seed)
    return model


def weights(model) -> dict[str, np.ndarray]:
    return {name: p.asnumpy().copy() for name, p in model.parameters_and_names()}


@pytest.fixture(scope="module")
def batches():
    return ft.PairBatches(ft.shapes_pairs("train", 48, seed=3), PREPROCESS, 8, seed=1)


def _numpy_infonce(logits: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    n = np.arange(len(logits))

    def cross_entropy(x):
        top = x.max(1, keepdims=True)
        return np.mean(np.log(np.exp(x - top).sum(1)) + top[:, 0] - x[n, n])

    return (cross_entropy(logits) + cross_entropy(logits.T)) / 2


def test_loss_is_symmetric_infonce_with_the_learnt_scale(batches):
    model = tiny()
    model.logit_scale.set_data(ms.Tensor(np.float32(np.log(30.0))))
    images, tokens, eot = batches(0)
    loss, logits = ft.contrastive_loss(model, images, tokens, eot)
    image = model.visual(images).asnumpy()
    text = model.encode_tokens(tokens, eot).asnumpy()
    unit = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in (image, text)]
    expected = 30.0 * unit[0] @ unit[1].T
    assert np.allclose(logits.asnumpy(), expected, atol=1e-4)
    assert float(loss.asnumpy()) == pytest.approx(_numpy_infonce(expected), abs=1e-5)
    assert float(ft.infonce(ms.Tensor(expected.T.astype(np.float32))).asnumpy()) == pytest.approx(
        _numpy_infonce(expected), abs=1e-5
    )  # symmetric


def test_weight_decay_spares_gains_biases_embeddings_and_the_scale():
    model = tiny()
    params = ft.trainable(model)
    decay = dict(zip([p.name for p in params], ft.weight_decays(params, 0.1), strict=True))
    assert len(params) == len(list(model.get_parameters()))
    for name in ("visual.conv1.weight", "visual.proj", "text_projection",
                 "transformer.resblocks.0.attn.in_proj_weight",
                 "visual.transformer.resblocks.1.mlp.c_fc.weight"):  # fmt: skip
        assert decay[name] == 0.1, name
    for name in ("logit_scale", "token_embedding.weight", "positional_embedding",
                 "visual.positional_embedding", "visual.class_embedding", "ln_final.weight",
                 "visual.ln_pre.bias", "transformer.resblocks.1.mlp.c_fc.bias"):  # fmt: skip
        assert decay[name] == 0.0, name
    assert all(v == 0.0 for n, v in decay.items() if n.endswith("bias"))


@pytest.mark.parametrize(
    "options, frozen",
    [
        (dict(lock_image=True), lambda n: n.startswith("visual.")),
        (dict(lock_text=True), lambda n: not n.startswith("visual.") and n != "logit_scale"),
        (
            dict(projections_only=True),
            lambda n: n not in ("visual.proj", "text_projection", "logit_scale"),
        ),  # fmt: skip
        (
            dict(unfreeze_last=1),
            lambda n: (
                ".resblocks.0." in n
                or n.startswith(
                    (
                        "visual.conv1",
                        "visual.class_embedding",
                        "visual.positional_embedding",
                        "visual.ln_pre",
                        "token_embedding",
                        "positional_embedding",
                    )
                )
            ),
        ),  # fmt: skip
    ],
)
def test_locked_parameters_stay_bitwise_and_the_rest_train(batches, options, frozen):
    model = tiny()
    before = weights(model)
    ft.fine_tune(model, batches, steps=2, lr=1e-3, progress=False, **options)
    after = weights(model)
    assert any(frozen(n) for n in before) and not all(frozen(n) for n in before)
    for name in before:
        if frozen(name):
            assert np.array_equal(before[name], after[name]), name
        else:
            assert not np.array_equal(before[name], after[name]), name


def test_accumulated_micro_batches_equal_one_whole_batch(batches):
    whole, split = tiny(), tiny()
    a = ft.fine_tune(whole, batches, steps=2, lr=1e-3, progress=False)
    b = ft.fine_tune(split, batches, steps=2, lr=1e-3, accumulate=4, progress=False)
    assert np.allclose(a.loss, b.loss, atol=1e-5), (a.loss, b.loss)
    for (name, p), (_, q) in zip(whole.parameters_and_names(), split.parameters_and_names(),
                                 strict=True):  # fmt: skip
        assert np.allclose(p.asnumpy(), q.asnumpy(), atol=2e-5), name
    with pytest.raises(ValueError, match="not divisible by accumulate"):
        ft.fine_tune(tiny(), batches, steps=1, accumulate=3, progress=False)


class Stop(Exception):
    pass


def test_resume_continues_to_the_uninterrupted_result(tmp_path, batches):
    options = dict(steps=4, lr=1e-3, warmup=2, progress=False)
    straight = tiny()
    full = ft.fine_tune(straight, batches, **options)

    def stop(history):
        if len(history.loss) == 3:
            raise Stop

    out = tmp_path / "run.ckpt"
    with pytest.raises(Stop):
        ft.fine_tune(tiny(), batches, out=out, checkpoint_every=2, callback=stop, **options)
    assert out.is_file() and (tmp_path / "run.optim.ckpt").is_file()
    resumed = tiny(seed=9)  # resume takes every weight from the checkpoint
    rest = ft.fine_tune(resumed, batches, out=out, resume=True, checkpoint_every=2, **options)
    assert np.allclose(rest.loss, full.loss[2:], atol=1e-6)
    for (name, p), (_, q) in zip(straight.parameters_and_names(), resumed.parameters_and_names(),
                                 strict=True):  # fmt: skip
        assert np.abs(p.asnumpy() - q.asnumpy()).max() <= 1e-6, name
    with pytest.raises(ValueError, match="other options"):
        ft.fine_tune(tiny(), batches, out=out, resume=True, **dict(options, lr=5e-4))

    loaded, _ = clip.load(out)  # the fine-tuned checkpoint is an ordinary one
    images = batches(0)[0]
    assert np.allclose(loaded.encode_image(images).asnumpy(),
                       straight.encode_image(images).asnumpy(), atol=1e-6)  # fmt: skip


def test_evaluations_run_before_during_and_after(batches):
    pairs = ft.shapes_pairs("test", 20, seed=2)
    samples = shapes.generate("test", 20, seed=2, objects=1)
    evals = {
        "recall": ft.recall_hook(PREPROCESS, pairs, k=(1, 5)),
        "shape": ft.zero_shot_hook(
            PREPROCESS,
            [s.image for s in samples],
            [shapes.SHAPES.index(s.labels[0].shape) for s in samples],
            list(shapes.SHAPES),
        ),  # fmt: skip
    }
    history = ft.fine_tune(tiny(), batches, steps=3, evals=evals, eval_every=2, progress=False)
    assert [row["step"] for row in history.evals] == [0, 2, 3]
    row = history.evals[0]
    assert set(row) == {"step", "shape", "recall image->text R@1", "recall image->text R@5",
                        "recall text->image R@1", "recall text->image R@5"}  # fmt: skip
    assert all(0 <= v <= 1 for k, v in row.items() if k != "step")
    assert row["recall image->text R@1"] <= row["recall image->text R@5"]
    fig = ft.plot_history(history)
    assert fig.axes[0].get_title() and fig.axes[0].get_xlabel() and fig.axes[1].get_ylabel()


def brute_force_recall(sims: np.ndarray, right: np.ndarray, n: int) -> float:
    """Share of queries (rows) where fewer than n wrong items beat the best right one."""
    best_right = np.where(right, sims, -np.inf).max(1, keepdims=True)
    return float(np.mean((np.where(right, -np.inf, sims) > best_right).sum(1) < n))


@pytest.mark.parametrize("repeated", [0, 5])
def test_recall_at_k_matches_brute_force(repeated):
    model = tiny(3)
    shapes = ft.shapes_pairs("test", 12, seed=4)
    # repeated: the first pairs share one caption, which is then right for each of their images
    captions = ["a photo of a shape."] * repeated + list(shapes.captions)[repeated:]
    pairs = ft.Pairs(list(shapes.images), captions)
    recalls = ft.recall_at_k(model, PREPROCESS, pairs, k=(1, 3))
    image = model.encode_image(np.stack([PREPROCESS(x) for x in pairs.images])).asnumpy()
    text = model.encode_text(clip.tokenize(captions)).asnumpy()
    sims = (image / np.linalg.norm(image, axis=1, keepdims=True)) @ (
        text / np.linalg.norm(text, axis=1, keepdims=True)
    ).T
    right = np.array([[a == b for b in captions] for a in captions])
    assert right.sum() == 12 + repeated * (repeated - 1)
    assert recalls["image->text R@1"] == pytest.approx(brute_force_recall(sims, right, 1))
    assert recalls["image->text R@3"] == pytest.approx(brute_force_recall(sims, right, 3))
    assert recalls["text->image R@3"] == pytest.approx(brute_force_recall(sims.T, right, 3))


def test_wise_ft_interpolates_weights():
    a, b = tiny(1), tiny(2)
    wa, wb = weights(a), weights(b)
    for alpha, expected in ((0.0, wa), (1.0, wb)):
        mixed = weights(ft.wise_ft(a, b, alpha))
        assert all(np.array_equal(mixed[n], expected[n]) for n in wa)
    half = weights(ft.wise_ft(a, b, 0.5))
    assert all(np.allclose(half[n], (wa[n] + wb[n]) / 2, atol=1e-7) for n in wa)
    other = clip.CLIP(dataclasses.replace(TINY, transformer_layers=1))
    with pytest.raises(ValueError, match="one architecture"):
        ft.wise_ft(a, other, 0.5)
    with pytest.raises(ValueError, match="alpha must be between"):
        ft.wise_ft(a, b, 1.5)
    sweep = ft.wise_ft_sweep(a, b, target=lambda m: float(m.logit_scale.asnumpy()),
                             control=lambda m: 0.5, alphas=[0, 0.5, 1], progress=False)  # fmt: skip
    assert [r["alpha"] for r in sweep] == [0, 0.5, 1]
    fig = ft.plot_wise_ft(sweep, target="new", control="old")
    assert "new" in fig.axes[0].get_ylabel() and "old" in fig.axes[0].get_xlabel()


def test_mixed_precision_on_cpu_says_it_trains_fp32(batches):
    with pytest.raises(ValueError, match="on CPU training runs in fp32"):
        ft.fine_tune(tiny(), batches, steps=1, precision="fp16", progress=False)


def test_the_demo_trainer_uses_the_one_loop(monkeypatch):
    calls = []
    real = demo_train.fine_tune

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    assert real is ft.fine_tune
    monkeypatch.setattr(demo_train, "fine_tune", spy)
    demo_train.train(seed=1, steps=1, batch_size=4, warmup=1, config=TINY, jit=False,
                     progress=False)  # fmt: skip
    assert calls and calls[0]["steps"] == 1


def _images(folder: Path, n: int) -> list[shapes.Sample]:
    folder.mkdir(parents=True, exist_ok=True)
    samples = shapes.generate("test", n, seed=5, objects=1)
    for i, s in enumerate(samples):
        Image.fromarray(s.image).save(folder / f"{i}.png")
    return samples


def test_pairs_from_tables_folders_and_collections(tmp_path):
    samples = _images(tmp_path / "img", 6)
    rows = [{"path": f"img/{i}.png", "caption": s.caption} for i, s in enumerate(samples)]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "pairs.parquet")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "pairs.csv").write_text(
        "path,caption\n" + "".join(f'{r["path"]},"{r["caption"]}"\n' for r in rows)
    )
    read = [ft.read_pairs(tmp_path / f"pairs.{kind}") for kind in ("csv", "jsonl", "parquet")]
    for pairs in read:
        assert list(pairs.captions) == [s.caption for s in samples]
        assert list(pairs.images) == [str(tmp_path / r["path"]) for r in rows]
    (tmp_path / "bad.csv").write_text("file,text\na.png,a\n")
    with pytest.raises(ValueError, match="lacks \\['path', 'caption'\\]"):
        ft.read_pairs(tmp_path / "bad.csv")
    (tmp_path / "gone.csv").write_text("path,caption\nnope.png,a\n")
    with pytest.raises(FileNotFoundError, match="1 images not found"):
        ft.read_pairs(tmp_path / "gone.csv")

    for name in ("red_square", "blue circle"):
        _images(tmp_path / "classes" / name, 2)
    pairs = ft.folder_pairs(tmp_path / "classes", templates=["a {}.", "the {}!"])
    assert list(pairs.captions) == ["a blue circle.", "the blue circle!", "a red square.",
                                    "the red square!"]  # fmt: skip
    assert list(pairs.labels) == [0, 0, 1, 1] and list(pairs.classes) == ["blue circle",
                                                                          "red square"]  # fmt: skip

    (tmp_path / "metadata").mkdir()
    meta = [dict(key=str(i), path=r["path"], caption=r["caption"] if i != 2 else None, size=1,
                 error="HTTP 404" if i == 4 else None) for i, r in enumerate(rows)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(meta), tmp_path / "metadata" / "metadata_000000.parquet")
    pairs = ft.open_pairs(tmp_path)
    assert list(pairs.captions) == [samples[i].caption for i in (0, 1, 3, 5)]

    train, val = ft.split(read[0], val_fraction=0.34, seed=1)
    assert len(val) == 2 and len(train) == 4
    assert set(train.images).isdisjoint(val.images)
    assert ft.split(read[0], val_fraction=0.34, seed=1)[1].images == val.images


def test_cli_fine_tunes_a_checkpoint_and_writes_one_clip_loads(tmp_path):
    samples = _images(tmp_path / "img", 10)
    rows = "".join(f'img/{i}.png,"{s.caption}"\n' for i, s in enumerate(samples))
    (tmp_path / "pairs.csv").write_text("path,caption\n" + rows)
    start = tiny()
    ft.save(start, tmp_path / "start.ckpt")
    command = [sys.executable, "-m", "workbench.finetune", "--data", "pairs.csv", "--model",
               "start.ckpt", "--out", "ft.ckpt", "--steps", "2", "--batch-size", "4",
               "--val-fraction", "0.2", "--lr", "1e-3", "--history", "h.json"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "wrote ft.ckpt" in done.stdout
    history = json.loads((tmp_path / "h.json").read_text())
    assert len(history["loss"]) == 2 and [r["step"] for r in history["evals"]] == [0, 2]
    tuned, _ = clip.load(tmp_path / "ft.ckpt")
    pairs = zip(start.parameters_and_names(), tuned.parameters_and_names(), strict=True)
    assert any(not np.array_equal(p.asnumpy(), q.asnumpy()) for (_, p), (_, q) in pairs)
    bad = subprocess.run([*command[:4], "nothing.csv", *command[5:]], cwd=tmp_path, text=True,
                         capture_output=True, timeout=300)  # fmt: skip
    assert bad.returncode != 0 and "nothing.csv does not exist" in bad.stderr
