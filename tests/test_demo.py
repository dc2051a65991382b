"""The demo: synthetic shapes, the CIFAR writer, training, and the shipped checkpoint's accuracy."""

import dataclasses
import itertools
import re
from pathlib import Path

import mindspore.dataset as ds
import numpy as np
import pytest

import clip
from clip.checkpoints import read_state_dict
from workbench import finetune
from workbench.demo import cifar, shapes, train
from workbench.demo.evaluate import evaluate

DEMO_CKPT = Path(clip.__file__).resolve().parent / "weights" / "demo.ckpt"
TINY = dataclasses.replace(
    train.DEMO, vision_width=64, vision_layers=1, transformer_width=64, transformer_layers=1
)
NAMES = {*shapes.SHAPES, *shapes.COLOURS, *shapes.SIZES, *shapes.POSITIONS}
PHRASES = {"on the left": "left", "on the right": "right", "at the top": "top",
           "at the bottom": "bottom", "in the centre": "centre"}  # fmt: skip
OBJECT = re.compile(
    rf"(?:({'|'.join(shapes.SIZES)}) )?(?:({'|'.join(shapes.COLOURS)}) )?"
    rf"({'|'.join(shapes.SHAPES)}|shape)\b(?: ({'|'.join(PHRASES)}))?"
)


@pytest.fixture(scope="module")
def samples() -> list[shapes.Sample]:
    return shapes.generate("train", 400, seed=7)


def _same(a: shapes.Sample, b: shapes.Sample) -> bool:
    return (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.masks, b.masks)
        and (a.caption, a.labels, a.background) == (b.caption, b.labels, b.background)
    )


def test_data_is_deterministic_and_indexable():
    first = shapes.generate("test", 6, seed=3)
    assert all(map(_same, first, shapes.generate("test", 6, seed=3)))
    assert all(map(_same, first[2:], shapes.generate("test", 4, seed=3, start=2)))
    assert not any(map(_same, first, shapes.generate("test", 6, seed=4)))
    assert not any(map(_same, first, shapes.generate("train", 6, seed=3)))
    image = first[0].image
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)


def test_data_covers_the_attributes(samples):
    labels = [label for s in samples for label in s.labels]
    assert {label.shape for label in labels} == set(shapes.SHAPES) and len(shapes.SHAPES) >= 5
    assert {label.colour for label in labels} == set(shapes.COLOURS) and len(shapes.COLOURS) >= 6
    assert {label.size for label in labels} == {"small", "large"}
    assert {label.position for label in labels} == set(shapes.POSITIONS)
    assert {len(s.labels) for s in samples} == {1, 2}
    assert {s.background for s in samples} == set(shapes.BACKGROUNDS)
    assert 0.3 < np.mean([s.greyscale for s in samples]) < 0.6
    others = shapes.generate("test", 100) + shapes.generate("heldout", 100)
    assert not any(s.greyscale for s in others)


def _shape_of(mask: np.ndarray) -> str:
    """Tell the shape from the mask's geometry alone."""
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    fill = box.mean()
    if fill > 0.95:
        return "square"
    if fill > 0.7:
        return "circle"
    if fill < 0.47:
        return "star"
    return "triangle" if box[-1].sum() > 2 * box[0].sum() else "cross"


def _colour_of(rgb: np.ndarray) -> str:
    """The palette colour nearest to rgb at any brightness."""
    scales = np.linspace(0.7, 1.15, 46)[:, None]
    error = {c: np.abs(rgb - scales * np.array(v)).max(-1).min() for c, v in shapes.COLOURS.items()}
    return min(error, key=error.get)


def test_masks_match_objects(samples):
    areas, contrasts = {}, []
    for s in samples:
        assert s.masks.dtype == bool and s.masks.shape == (len(s.labels), 64, 64)
        assert not np.logical_and.reduce(s.masks).any() or len(s.labels) == 1
        for label, mask in zip(s.labels, s.masks, strict=True):
            assert _shape_of(mask) == label.shape
            pixels = np.unique(s.image[mask], axis=0)
            assert len(pixels) == 1  # one flat colour per object
            if s.greyscale:
                assert len(set(pixels[0])) == 1
            else:
                assert _colour_of(pixels[0]) == label.colour
            ground = np.median(s.image[~s.masks.any(0)].mean(-1))
            contrasts.append(abs(pixels[0].mean() - ground))
            ys, xs = np.nonzero(mask)
            assert np.hypot(xs.mean() - shapes.POSITIONS[label.position][0],
                            ys.mean() - shapes.POSITIONS[label.position][1]) < 6  # fmt: skip
            areas.setdefault((label.shape, label.size), []).append(mask.sum())
        if len(s.labels) == 2:
            assert not (s.masks[0] & s.masks[1]).any()
    for shape in shapes.SHAPES:
        assert min(areas[shape, "large"]) > max(areas[shape, "small"])
    assert np.mean(np.array(contrasts) > 25) > 0.99  # objects stand out in brightness, too


def test_captions_match_labels(samples):
    background_words = {"plain": "flat", "gradient": "gradient", "noisy": "noise"}
    for s in samples:
        words = re.findall(r"[a-z]+", s.caption.replace("black and white", "greyscale"))
        mentioned = [w for w in words if w in NAMES]
        assert mentioned, s.caption
        allowed = {v for label in s.labels for v in vars(label).values()}
        assert set(mentioned) <= allowed, (s.caption, s.labels)
        assert not (s.greyscale and set(words) & set(shapes.COLOURS)), s.caption
        if not s.greyscale and not set(words) & set(shapes.COLOURS):  # the shape alone, in colour
            assert len(s.labels) == 1 and s.labels[0].colour in shapes.COMPLETE, s.caption
        assert ("and" in words) == (len(s.labels) == 2), s.caption
        for word, kind in background_words.items():
            assert word not in words or s.background == kind, s.caption
        for size, colour, shape, position in OBJECT.findall(s.caption):  # each names one object
            wanted = dict(size=size, colour=colour, shape=shape, position=PHRASES.get(position))
            assert any(
                all(v in ("", None, "shape") or getattr(o, k) == v for k, v in wanted.items())
                for o in s.labels
            ), (s.caption, s.labels)
        assert not re.search(r"\ba [aeiou]", s.caption), s.caption
    assert len({re.sub("|".join(NAMES), "_", s.caption) for s in samples}) >= 10


def test_held_out_combinations_never_reach_training():
    held_out = set(shapes.HELD_OUT)
    train_samples = shapes.generate("train", 2000, seed=0)
    assert not any((o.colour, o.shape) in held_out for s in train_samples for o in s.labels)
    assert not any(f"{c} {s}" in x.caption for c, s in held_out for x in train_samples)
    assert not any(
        (o.colour, o.shape) in held_out for s in shapes.generate("test", 300) for o in s.labels
    )
    heldout = shapes.generate("heldout", 300)
    assert all((s.labels[0].colour, s.labels[0].shape) in held_out for s in heldout)
    assert {(s.labels[0].colour, s.labels[0].shape) for s in heldout} == held_out
    assert {c for c, _ in shapes.SEEN} == set(shapes.COLOURS)  # every colour and shape stays seen
    assert {s for _, s in shapes.SEEN} == set(shapes.SHAPES)
    assert all((c, s) in shapes.SEEN for c in shapes.COMPLETE for s in shapes.SHAPES)


def _indexed_images(n: int) -> np.ndarray:
    """Images whose first pixels spell their index, and a gradient to catch plane order."""
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:] = np.arange(32, dtype=np.uint8)[None, :, None, None] * np.array([1, 3, 7], np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return images


def test_cifar_without_a_train_split_writes_the_same_test_files_alone(tmp_path):
    from workbench import data

    test = _indexed_images(cifar.TEST)
    labels = (np.arange(cifar.TEST) * 7) % 25
    whole, alone = tmp_path / "whole", tmp_path / "alone"
    train = (_indexed_images(cifar.TRAIN), np.zeros(cifar.TRAIN, int))
    names = list(shapes.SHAPES)
    cifar.write_cifar10(whole / "10", train, (test, labels % 5), names)
    cifar.write_cifar10(alone / "10", None, (test, labels % 5), names)
    fine = [c.replace(" ", "_") for c in shapes.COMBOS]
    cifar.write_cifar100(whole / "100", (*train, train[1]), (test, labels % 5, labels), names, fine)
    cifar.write_cifar100(alone / "100", None, (test, labels % 5, labels), names, fine)
    assert sorted(p.name for p in (alone / "10").iterdir()) == [
        "batches.meta.txt",
        "test_batch.bin",
    ]
    assert sorted(p.name for p in (alone / "100").iterdir()) == [
        "coarse_label_names.txt",
        "fine_label_names.txt",
        "test.bin",
    ]
    for name in ("10/test_batch.bin", "100/test.bin", "100/fine_label_names.txt"):
        assert (alone / name).read_bytes() == (whole / name).read_bytes()
    read = data.cifar100(alone / "100", split="test")
    assert np.array_equal(read.labels, labels)
    with pytest.raises(FileNotFoundError, match="train.bin"):
        data.cifar100(alone / "100", split="train")


def test_cifar_round_trip_through_mindspore_dataset(tmp_path):
    images = {"train": _indexed_images(cifar.TRAIN), "test": _indexed_images(cifar.TEST)[::-1]}
    fine = {k: (np.arange(len(v)) * 7) % 30 for k, v in images.items()}
    coarse = {k: v % 5 for k, v in fine.items()}
    names10, coarse_names = [f"c{i}" for i in range(10)], list(shapes.SHAPES)
    fine_names = [c.replace(" ", "_") for c in shapes.COMBOS]
    c10 = cifar.write_cifar10(
        tmp_path / "c10", *[(images[k], fine[k] % 10) for k in ("train", "test")], names10
    )
    splits = [(images[k], coarse[k], fine[k]) for k in ("train", "test")]
    c100 = cifar.write_cifar100(tmp_path / "c100", *splits, coarse_names, fine_names)
    assert sorted(p.name for p in c10.iterdir()) == [
        "batches.meta.txt",
        *[f"data_batch_{i}.bin" for i in range(1, 6)],
        "test_batch.bin",
    ]
    assert (c10 / "batches.meta.txt").read_text().split() == names10
    assert (c100 / "fine_label_names.txt").read_text().splitlines() == fine_names
    assert (c100 / "coarse_label_names.txt").read_text().splitlines() == coarse_names

    picks = [0, 9999, 10000, 33333, 49999]
    read = ds.Cifar10Dataset(str(c10), usage="train", sampler=ds.SubsetSampler(picks))
    rows = list(read.create_tuple_iterator(output_numpy=True))
    assert [int(label) for _, label in rows] == [int(fine["train"][i] % 10) for i in picks]
    assert all(
        np.array_equal(img, images["train"][i]) for (img, _), i in zip(rows, picks, strict=True)
    )
    read = ds.Cifar10Dataset(str(c10), usage="test", shuffle=False)
    assert read.get_dataset_size() == cifar.TEST
    read = ds.Cifar100Dataset(str(c100), usage="test", shuffle=False)
    rows = list(read.create_dict_iterator(output_numpy=True))
    assert np.array_equal(np.stack([r["image"] for r in rows]), images["test"])
    assert np.array_equal([r["fine_label"] for r in rows], fine["test"])
    assert np.array_equal([r["coarse_label"] for r in rows], coarse["test"])
    read = ds.Cifar100Dataset(str(c100), usage="train", sampler=ds.SubsetSampler(picks))
    rows = list(read.create_dict_iterator(output_numpy=True))
    assert [int(r["fine_label"]) for r in rows] == [int(fine["train"][i]) for i in picks]


def test_cifar_writer_refuses_what_cifar_cannot_hold(tmp_path):
    images, labels = _indexed_images(cifar.TEST), np.zeros(cifar.TEST, int)
    with pytest.raises(ValueError, match="exactly 50000 train"):
        cifar.write_cifar10(tmp_path, (images, labels), (images, labels), ["a", "b"])
    with pytest.raises(ValueError, match="32, 32, 3"):
        cifar.write_cifar100(
            tmp_path,
            (_indexed_images(cifar.TRAIN)[:, :16],),
            (images, labels, labels),
            ["a"],
            ["b"],
        )
    with pytest.raises(ValueError, match="outside the 2 class names"):
        cifar.write_cifar10(tmp_path, (_indexed_images(cifar.TRAIN), np.full(cifar.TRAIN, 2)),
                            (images, labels), ["a", "b"])  # fmt: skip
    with pytest.raises(ValueError, match="joined by '_'"):
        cifar.write_cifar10(tmp_path, (images, labels), (images, labels), ["red circle"])
    assert not any(tmp_path.iterdir())


def test_shapes_as_cifar_labels():
    samples = shapes.generate("heldout", 5, objects=1)
    images, coarse, fine = cifar.as_cifar(samples)
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    for s, c, f in zip(samples, coarse, fine, strict=True):
        assert shapes.SHAPES[c] == s.labels[0].shape
        assert shapes.COMBOS[f] == f"{s.labels[0].colour} {s.labels[0].shape}"
    with pytest.raises(ValueError, match="objects=1"):
        cifar.as_cifar(shapes.generate("train", 1, objects=2))


def test_tiny_training_learns_reproducibly_and_saves(tmp_path):
    kwargs = dict(
        seed=1, steps=3, batch_size=16, lr=3e-4, warmup=1, config=TINY, jit=False, progress=False
    )
    model, losses = train.train(**kwargs)
    assert np.all(np.isfinite(losses)) and len(losses) == 3
    assert train.train(**kwargs)[1] == losses  # reproducible from the seed
    fresh = train.CLIP(TINY)
    train.initialise(fresh, 1)
    batch = train.Batches(1, 16)()
    before = float(finetune.contrastive_loss(fresh, *batch)[0].asnumpy())
    one_step = train.train(**dict(kwargs, steps=1))[0]  # one AdamW step on exactly this batch
    after = float(finetune.contrastive_loss(one_step, *batch)[0].asnumpy())
    assert after < before - 0.05 and abs(before - losses[0]) < 1e-4
    assert 0 <= float(model.logit_scale.asnumpy()) <= np.log(100) + 1e-6

    train.save(model, tmp_path / "tiny.ckpt")
    state = read_state_dict(tmp_path / "tiny.ckpt")
    assert set(state) == {name for name, _ in model.parameters_and_names()}
    loaded, preprocess = clip.load(tmp_path / "tiny.ckpt")
    images = batch[0]
    expected = model.encode_image(images).asnumpy()
    assert (
        np.abs(loaded.encode_image(images).asnumpy() - expected).max()
        < 2e-2 * np.abs(expected).max()
    )


def test_initialise_sets_every_parameter_from_the_seed():
    a, b = train.CLIP(TINY), train.CLIP(TINY)
    train.initialise(a, 5)
    train.initialise(b, 5)
    for (name, pa), (_, pb) in zip(a.parameters_and_names(), b.parameters_and_names(), strict=True):
        assert np.array_equal(pa.asnumpy(), pb.asnumpy()), name
    weights = dict(a.parameters_and_names())
    assert abs(weights["token_embedding.weight"].asnumpy().std() - 0.02) < 1e-3
    assert not weights["transformer.resblocks.0.mlp.c_fc.bias"].asnumpy().any()


def test_schedule_warms_up_then_decays():
    rates = finetune.schedule(1e-3, 100, 10)
    assert rates[9] == pytest.approx(1e-3) and rates[0] == pytest.approx(1e-4)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:])) and rates[-1] < 1e-6


def test_shipped_demo_clears_its_targets():
    model, preprocess = clip.load("demo")
    assert clip.hub.SHIPPED["demo"] == DEMO_CKPT and DEMO_CKPT.stat().st_size <= 15 * 2**20
    scores = evaluate(model, preprocess, n=500, seed=0)
    # issue 4's targets (chance: 20%, 12.5%, 2.5%); the shipped model: 96.0%, 100%, 83.4%
    assert scores["shape"] >= 0.95 and scores["colour"] >= 0.95, scores
    assert scores["combo_heldout"] >= 0.80, scores
    assert scores["combo_seen"] >= 0.93, scores
