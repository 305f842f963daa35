"""Stand-in data (``data.stand_in: true``): a real dataset's shape, classes and split sizes,
generated from ids and a seed, learnable; and a plan or a config check that never needs data.

Sizes are checked against the published splits written out here (not read back from
``pbu.registry``), so a wrong registry entry fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from pbu.config import ConfigError, check_config
from pbu.data import (
    load_prepared,
    save_prepared,
    stand_in_dataset,
    stand_in_images,
    stratified_subset,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

# name: (channels, image size, classes, train images, test images), from the datasets' papers
# and torchvision's loaders
PUBLISHED = {
    "mnist5k": (1, 28, 10, 4000, 1000),
    "mnist": (1, 28, 10, 60000, 10000),
    "fashion_mnist": (1, 28, 10, 60000, 10000),
    "cifar10": (3, 32, 10, 50000, 10000),
    "cifar100": (3, 32, 100, 50000, 10000),
    "food101": (3, 224, 101, 75750, 25250),
}
MNIST_TRAIN_CLASS_SIZES = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_stand_in_has_the_real_shape_classes_and_split_sizes(name):
    channels, size, classes, n_train, n_test = PUBLISHED[name]
    train, test = stand_in_dataset(name)
    assert (len(train), len(test)) == (n_train, n_test)
    for split, n in ((train, n_train), (test, n_test)):
        assert split.spec.name == name and split.spec.num_classes == classes
        counts = torch.bincount(split.labels, minlength=classes)
        assert len(counts) == classes and int(counts.min()) > 0
        if name in ("mnist5k", "fashion_mnist", "cifar10", "cifar100", "food101"):
            assert counts.tolist() == [n // classes] * classes  # balanced datasets
        x, y = next(iter(split.loader(4)))
        assert tuple(x.shape) == (4, channels, size, size) and x.dtype == torch.float32
        assert torch.equal(y, split.labels[:4])
    if name == "mnist":
        assert torch.bincount(train.labels).tolist() == MNIST_TRAIN_CLASS_SIZES
    # train and test are different draws (disjoint ids) of the same classes
    assert not set(train.ids[:1000].tolist()) & set(test.ids.tolist())
    # classes are interleaved, as in the real files (a prefix is not one class)
    assert len(torch.unique(train.labels[:50])) > 1


def test_max_image_size_caps_only_larger_datasets():
    food, _ = stand_in_dataset("food101", max_image_size=32)
    mnist, _ = stand_in_dataset("mnist", max_image_size=32)
    assert food.spec.image_size == 32 and tuple(food.subset(torch.arange(2)).images().shape) == (
        2,
        3,
        32,
        32,
    )
    assert mnist.spec.image_size == 28
    with pytest.raises(ValueError, match="max_image_size"):
        stand_in_dataset("cifar10", max_image_size=4)


def test_images_are_a_function_of_seed_class_and_id():
    train, _ = stand_in_dataset("cifar10", seed=3)
    idx = torch.tensor([5, 17, 123, 4000])
    a = train.subset(idx).images()
    again = stand_in_dataset("cifar10", seed=3)[0].subset(idx).images()
    other = stand_in_dataset("cifar10", seed=4)[0].subset(idx).images()
    assert a.dtype == torch.uint8 and torch.equal(a, again)
    assert (a.float() - other.float()).abs().mean() > 10  # another seed: other images
    # an image does not depend on which others are drawn with it, or in what order
    single = stand_in_images(train.spec, train.ids[idx[2:3]], train.labels[idx[2:3]], 3)
    assert torch.equal(single[0], a[2])
    rev = train.subset(idx.flip(0)).images()
    assert torch.equal(rev.flip(0), a)
    # the loader yields exactly these images, normalised with the dataset's statistics
    x, _ = next(iter(train.subset(idx).loader(4)))
    mean = torch.tensor(train.spec.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(train.spec.std).view(1, 3, 1, 1) * 255
    assert torch.allclose(x, (a.float() - mean) / std)
    # pixel statistics near the dataset's (not pure 0/255 noise, not a constant)
    many = train.subset(torch.arange(512)).images().float() / 255
    assert torch.allclose(many.mean((0, 2, 3)), torch.tensor(train.spec.mean), atol=0.05)
    assert torch.allclose(many.std((0, 2, 3)), torch.tensor(train.spec.std), atol=0.05)


def test_classes_differ_and_images_of_a_class_differ():
    train, _ = stand_in_dataset("mnist", seed=0)
    sub = train.subset(stratified_subset(train.labels, 40, 0))
    x = sub.images().float()
    means = torch.stack([x[sub.labels == c].mean(0) for c in range(10)])  # [10, 1, 28, 28]
    within = torch.stack([x[sub.labels == c].std(0).mean() for c in range(10)])
    between = torch.cdist(means.flatten(1), means.flatten(1))
    assert between[~torch.eye(10, dtype=torch.bool)].min() > 100  # class patterns differ
    assert within.min() > 10  # no two images of a class are the same picture


def test_a_small_cnn_learns_stand_in_classes_in_one_epoch():
    """Learnable with class-dependent structure: one epoch of a tiny CNN on 100 images per
    class beats chance (10 %) by far, while the same images with their labels shuffled (no
    relation between picture and label, as pure noise would have) stay near chance."""
    from pbu.data import TensorImages
    from pbu.models import SmallCNN
    from pbu.train import TrainRecipe, seed_everything, train_model

    train, test = stand_in_dataset("fashion_mnist", seed=0)
    train = train.subset(stratified_subset(train.labels, 100, 0))
    test = test.subset(stratified_subset(test.labels, 30, 1))
    shuffled = train.labels[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))]
    control = TensorImages(train.spec, train.images(), shuffled)

    def accuracy(data) -> float:
        seed_everything(0)
        model = SmallCNN(10, 1, 28, width=4, hidden=16)
        history = train_model(
            model,
            data,
            TrainRecipe(epochs=1, batch_size=20, optimizer="adam", lr=3e-3, weight_decay=0.0),
            seed=0,
            test=test,
            progress=False,
        )
        return history[-1]["test_acc"]

    learned, chance = accuracy(train), accuracy(control)
    assert learned > 50.0 and chance < 25.0, (learned, chance)


def test_prepared_file_round_trip_keeps_ids_labels_seed_and_size(tmp_path):
    train, test = stand_in_dataset("food101", seed=2, max_image_size=32)
    train = train.subset(stratified_subset(train.labels, 3, 0))
    test = test.subset(stratified_subset(test.labels, 2, 1))
    save_prepared(tmp_path / "f.pt", train, test)
    assert (tmp_path / "f.pt").stat().st_size < 100_000  # ids, not pixels
    tr2, te2 = load_prepared(tmp_path / "f.pt")
    assert tr2.spec.image_size == 32 and tr2.spec.num_classes == 101 and tr2.seed == 2
    assert torch.equal(tr2.labels, train.labels) and torch.equal(te2.ids, test.ids)
    assert torch.equal(tr2.images(), train.images())


def test_caps_keep_more_of_the_forget_classes_when_asked():
    labels = torch.arange(10).repeat_interleave(20)  # 20 of each class
    idx = stratified_subset(labels, 1, 0, at_least={3: 5, 7: 30})
    assert torch.bincount(labels[idx], minlength=10).tolist() == [1, 1, 1, 5, 1, 1, 1, 20, 1, 1]
    assert torch.equal(
        stratified_subset(labels, 2, 0), stratified_subset(labels, 2, 0, at_least={})
    )


# ---------------------------------------------------------------------------------------------
# The config: stand_in is schema-checked; data.source is the download job's business alone
# ---------------------------------------------------------------------------------------------


def _config(**data) -> dict:
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, {"data": data})
    return config


def test_stand_in_keys_are_schema_checked():
    assert (
        check_config(_config(stand_in=True, max_image_size=32), SCHEMA, check_results=False)[
            "data"
        ]["stand_in"]
        is True
    )
    with pytest.raises(ConfigError, match="data.stand_in"):
        check_config(_config(stand_in="yes"), SCHEMA, check_results=False)
    with pytest.raises(ConfigError, match="data.max_image_size"):
        check_config(_config(stand_in=True, max_image_size=4), SCHEMA, check_results=False)
    with pytest.raises(ConfigError, match="data.max_image_size: applies to stand-in data only"):
        check_config(_config(max_image_size=32), SCHEMA, check_results=False)
