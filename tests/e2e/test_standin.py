"""Stand-in data through the `pbu` command and `snakemake -n`: a download that needs no data, a
missing source folder named by the download job (not the config check), a plan without the
dataset installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pbu.config import check_config
from pbu.data import load_prepared
from pbu.errors import DataUnavailableError

from ..unit.test_standin import SCHEMA, _config

REPO = Path(__file__).resolve().parents[2]
PBU = Path(sys.executable).with_name("pbu")


@pytest.mark.slow
def test_pbu_download_stand_in_needs_no_data(tmp_path):
    out = tmp_path / "c100.pt"
    proc = subprocess.run(
        [
            str(PBU),
            "download",
            "--dataset",
            "cifar100",
            "--stand-in",
            "--root",
            str(tmp_path / "nothing-here"),
            "--max-train-per-class",
            "4",
            "--max-test-per-class",
            "2",
            "--keep-classes",
            "7,9",
            "--keep-per-class",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    train, test = load_prepared(out)
    want = [4] * 100
    want[7] = want[9] = 5
    assert torch.bincount(train.labels).tolist() == want
    want = [2] * 100
    want[7] = want[9] = 5
    assert torch.bincount(test.labels).tolist() == want
    assert not (tmp_path / "nothing-here").exists()  # nothing fetched or unpacked
    bad = subprocess.run(
        [
            str(PBU),
            "download",
            "--dataset",
            "cifar10",
            "--stand-in",
            "--max-image-size",
            "3",
            "--out",
            str(tmp_path / "x.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "max-image-size" in bad.stderr


@pytest.mark.slow
def test_missing_source_folder_fails_the_download_not_the_config(tmp_path):
    missing = tmp_path / "no-such-folder"
    # the config check (what `snakemake -n` runs) accepts it ...
    check_config(_config(source=str(missing)), SCHEMA, check_results=False)
    # ... and the download job says what is wrong, with the Debian hint
    proc = subprocess.run(
        [
            str(PBU),
            "download",
            "--dataset",
            "fashion_mnist",
            "--root",
            str(tmp_path / "root"),
            "--source",
            str(missing),
            "--no-download",
            "--out",
            str(tmp_path / "fm.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert f"config key data.source: {missing} is not a folder" in proc.stderr
    assert "apt-get install dataset-fashion-mnist" in proc.stderr
    assert not (tmp_path / "fm.pt").exists()
    from pbu.data import load_dataset

    with pytest.raises(DataUnavailableError, match="is not a folder"):
        load_dataset("fashion_mnist", tmp_path / "root", source=missing, download=False)


@pytest.mark.slow
def test_fashion_mnist_plan_needs_no_dataset(tmp_path):
    """`snakemake -n` of the Fashion-MNIST paper config on a machine without Debian's package
    (data.source pointed at a folder that does not exist)."""
    results = tmp_path / "results"
    override = tmp_path / "no-package.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "results": str(results),
                "data": {"source": str(tmp_path / "absent/fashion-mnist")},
                "mlflow": {"tracking_uri": f"sqlite:///{results}/mlflow/mlflow.db"},
            }
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--quiet",
            "rules",
            "--cores",
            "1",
            "--configfile",
            "config/paper/fashion_mnist.yaml",
            str(override),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "download" in proc.stdout + proc.stderr  # the job that will need the folder
    assert not (results / "data").exists()
