"""Fashion-MNIST through the real loader path, from Debian's dataset-fashion-mnist files.

`pbu download` (the command the pipeline's download rule runs) adopts the four gzip'd IDX files
from the Debian folder into torchvision's layout, loads them with torchvision's FashionMNIST, and
writes the prepared file every later job reads. The test checks that file against the IDX files
parsed here independently (header, shapes, every byte, label counts).
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pbu.data import load_prepared

# Debian's package; PBU_FASHION_MNIST_SOURCE points elsewhere (a folder that does not exist
# shows what a machine without the package does: these tests skip, saying why).
SOURCE = Path(os.environ.get("PBU_FASHION_MNIST_SOURCE", "/usr/share/datasets/fashion-mnist"))
PBU = Path(sys.executable).with_name("pbu")

pytestmark = [
    pytest.mark.slow,  # the files are prepared by the pbu CLI, as the pipeline does
    pytest.mark.skipif(
        not SOURCE.is_dir(), reason=f"{SOURCE} is absent: apt-get install dataset-fashion-mnist"
    ),
]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip'd), parsed from its header: magic 0x0000 08 <ndim>, then big-endian
    uint32 sizes, then uint8 data."""
    raw = gzip.decompress(path.read_bytes())
    assert raw[:3] == b"\x00\x00\x08", f"{path}: not a uint8 IDX file"
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    assert data.size == int(np.prod(shape))
    return data.reshape(shape)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fashion")
    out = tmp / "fm.pt"
    proc = subprocess.run(
        [
            str(PBU),
            "download",
            "--dataset",
            "fashion_mnist",
            "--root",
            str(tmp / "root"),
            "--source",
            str(SOURCE),
            "--no-download",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # adopted into torchvision's layout, uncompressed, without a download
    raw = tmp / "root" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        f"{s}-{k}-idx{d}-ubyte"
        for s in ("train", "t10k")
        for k, d in (("images", 3), ("labels", 1))
    )
    return out


def test_prepared_fashion_mnist_has_the_published_sizes(prepared):
    train, test = load_prepared(prepared)
    assert train.spec.name == "fashion_mnist" and train.spec.num_classes == 10
    assert (len(train), len(test)) == (60_000, 10_000)
    for split, per_class in ((train, 6000), (test, 1000)):
        assert split.images.dtype == torch.uint8
        assert tuple(split.images.shape[1:]) == (1, 28, 28)
        assert split.labels.dtype == torch.int64
        assert torch.bincount(split.labels, minlength=10).tolist() == [per_class] * 10


@pytest.mark.parametrize("split,prefix", [("train", "train"), ("test", "t10k")])
def test_prepared_fashion_mnist_matches_the_debian_idx_files(prepared, split, prefix):
    data = dict(zip(("train", "test"), load_prepared(prepared)))[split]
    images = read_idx(SOURCE / f"{prefix}-images-idx3-ubyte.gz")  # [N, 28, 28]
    labels = read_idx(SOURCE / f"{prefix}-labels-idx1-ubyte.gz")  # [N]
    assert torch.equal(data.images[:, 0], torch.from_numpy(images.copy()))
    assert torch.equal(data.labels, torch.from_numpy(labels.astype(np.int64)))


@pytest.mark.slow
def test_pipeline_end_to_end_on_fashion_mnist_subset(tmp_path):
    """The whole pipeline on a CI-sized, class-stratified subset of the real Debian files."""
    import csv
    import shutil

    root = Path(__file__).resolve().parents[2]
    for item in ("Snakefile", "workflow", "config", "envs"):
        src = root / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / item)
    (tmp_path / "fm.yaml").write_text(f"""
experiment: fm-e2e
results: {tmp_path}/res
dataset: fashion_mnist
data: {{source: {SOURCE}, root: {tmp_path}/data, download: false,
        max_train_per_class: 150, max_test_per_class: 50}}
seeds: [0]
forget: [8]
methods: [pbu]
pretrain: {{epochs: 3}}
evaluation: {{relearn_max_steps: 10, mia_max_samples: 200}}
mlflow: {{tracking_uri: "sqlite:///{tmp_path}/res/mlflow/mlflow.db", experiment: fm-e2e}}
""")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "fm.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    train, test = load_prepared(tmp_path / "res/data/fashion_mnist.pt")
    assert torch.bincount(train.labels).tolist() == [150] * 10
    assert torch.bincount(test.labels).tolist() == [50] * 10
    runs = {r["method"]: r for r in csv.DictReader(open(tmp_path / "res/aggregate/runs.csv"))}
    assert float(runs["original"]["acc_retain_test"]) > 60.0  # a real classifier was trained
    assert float(runs["pbu"]["acc_forget_test"]) < float(runs["original"]["acc_forget_test"])
    assert float(runs["oracle"]["acc_forget_test"]) == 0.0
    assert (tmp_path / "res/report.md").exists()
