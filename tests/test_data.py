"""workbench.data: CIFAR binaries through mindspore.dataset, image folders, shapes, digits."""

import numpy as np
import pytest
from PIL import Image

from workbench import data
from workbench.demo import shapes as demo


def test_cifar10_reads_what_the_demo_writer_wrote(cifar_shapes):
    root, _, test = cifar_shapes
    for where in (root, root / "cifar-10-batches-bin"):
        dataset = data.cifar10(where, "test")
        assert dataset.classes == list(demo.SHAPES)
        np.testing.assert_array_equal(dataset.images, test[0])  # file order, not shuffled
        np.testing.assert_array_equal(dataset.labels, test[1])
    image, label = dataset[5]
    assert (image.shape, image.dtype, label) == ((32, 32, 3), np.uint8, test[1][5])


def test_cifar100_fine_and_coarse_labels(cifar_shapes):
    root, _, test = cifar_shapes
    fine = data.cifar100(root, "test")
    assert fine.classes == list(demo.COMBOS)
    np.testing.assert_array_equal(fine.labels, test[2])
    np.testing.assert_array_equal(fine.images, test[0])
    coarse = data.cifar100(root / "cifar-100-binary", "test", label="coarse")
    assert coarse.classes == list(demo.SHAPES)
    np.testing.assert_array_equal(coarse.labels, test[1])


def test_missing_or_damaged_cifar_says_where_to_get_it(tmp_path, cifar_shapes):
    with pytest.raises(FileNotFoundError, match=r"cifar-100-binary\.tar\.gz.*-C " + str(tmp_path)):
        data.cifar100(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"www\.cs\.toronto\.edu/~kriz/cifar-10-binary"):
        data.cifar10(tmp_path / "absent")
    (tmp_path / "test.bin").write_bytes(b"\0" * 3074 * 10)
    (tmp_path / "fine_label_names.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="has 30740 bytes, not the 30740000"):
        data.cifar100(tmp_path, "test")
    (tmp_path / "batches.meta.txt").write_text("a\nb\n")
    (tmp_path / "test_batch.bin").write_bytes(b"\0" * 3073 * 10000)
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):  # train needs all 5 batches
        data.cifar10(tmp_path, "train")
    with pytest.raises(ValueError, match="split must be one of"):
        data.cifar10(cifar_shapes[0], "val")
    with pytest.raises(ValueError, match="label must be 'fine' or 'coarse'"):
        data.cifar100(cifar_shapes[0], label="super")


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {}
    for folder, count in (("sea_lion", 2), ("zebra", 3)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            pixels[folder, i] = rng.integers(0, 256, (5 + i, 7, 3), dtype=np.uint8)
            Image.fromarray(pixels[folder, i]).save(tmp_path / folder / f"{i}.png")
    (tmp_path / "zebra" / "notes.txt").write_text("not an image")
    dataset = data.image_folder(tmp_path)
    assert dataset.classes == ["sea lion", "zebra"]
    np.testing.assert_array_equal(dataset.labels, [0, 0, 1, 1, 1])
    image, label = dataset[3]
    assert label == 1
    np.testing.assert_array_equal(np.asarray(image), pixels["zebra", 1])
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        data.image_folder(tmp_path / "absent")
    (tmp_path / "empty" / "class").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images in"):
        data.image_folder(tmp_path / "empty")


def test_shapes_labels_follow_the_demo_samples():
    samples = demo.generate("heldout", 12, 3, objects=1)
    for target, name in (("shape", lambda o: o.shape), ("colour", lambda o: o.colour),
                         ("combo", lambda o: f"{o.colour} {o.shape}")):  # fmt: skip
        dataset = data.shapes_dataset("heldout", 12, seed=3, target=target)
        assert [dataset.classes[i] for i in dataset.labels] == [name(s.labels[0]) for s in samples]
    np.testing.assert_array_equal(dataset.images, np.stack([s.image for s in samples]))
    with pytest.raises(ValueError, match="target must be one of"):
        data.shapes_dataset(target="size")


def test_digits_are_upscaled_grey_rgb_with_a_fixed_split():
    from sklearn.datasets import load_digits

    train, test, everything = data.digits("train"), data.digits("test"), data.digits("all", scale=1)
    assert (len(train), len(test), len(everything)) == (1348, 449, 1797)
    assert train.images.shape[1:] == (32, 32, 3) and train.images.dtype == np.uint8
    assert everything.classes == [str(d) for d in range(10)]
    reference = load_digits()
    order = np.argsort(np.random.default_rng(0).permutation(1797))
    np.testing.assert_array_equal(everything.labels[order], reference.target)
    grey = everything.images[order][..., 0]
    np.testing.assert_array_equal(grey, np.round(reference.images * 255 / 16).astype(np.uint8))
    assert (everything.images == everything.images[..., :1]).all()
    counts = np.bincount(train.labels) + np.bincount(test.labels)
    np.testing.assert_array_equal(counts, np.bincount(reference.target))
    blocks = train.images.reshape(-1, 8, 4, 8, 4, 3)  # each 8x8 pixel became a 4x4 block
    assert (blocks == blocks[:, :, :1, :, :1]).all()


def test_image_dataset_slices_and_checks():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    dataset = data.ImageDataset(images, [0, 1, 1, 0], ["a", "b"])
    part = dataset[1:3]
    assert isinstance(part, data.ImageDataset) and len(part) == 2 and part.classes == ["a", "b"]
    np.testing.assert_array_equal(dataset[np.array([3, 1])].labels, [0, 1])
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        data.ImageDataset(images, [0, 1, 1], ["a", "b"])
    with pytest.raises(ValueError, match="outside the 2 classes"):
        data.ImageDataset(images, [0, 1, 2, 0], ["a", "b"])
