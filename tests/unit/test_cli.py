"""The `pbu` command: clear one-line errors for bad arguments and inputs."""

from __future__ import annotations

import json
import os

import pytest
import torch

from pbu.checkpoint import save_checkpoint
from pbu.cli import main
from pbu.data import DATASETS, TensorImages, save_prepared
from pbu.models import build_model

ARGS = {"num_classes": 10, "in_channels": 1, "image_size": 28}


@pytest.fixture
def files(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = TensorImages(
        DATASETS["mnist5k"],
        torch.randint(0, 256, (40, 1, 28, 28), generator=g, dtype=torch.uint8),
        torch.arange(40) % 10,
    )
    save_prepared(tmp_path / "d.pt", data, data)
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "m.pt", build_model("small_cnn", **ARGS), arch="small_cnn", model_args=ARGS
    )
    return tmp_path


def _unlearn(files, **over):
    args = {
        "--data": files / "d.pt",
        "--model": files / "m.pt",
        "--forget": "2",
        "--method": "finetune",
        "--seed": "0",
        "--retain-subset": "10",
        "--hparams": json.dumps(
            {"epochs": 1, "batch_size": 8, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}
        ),
        "--out-model": files / "o.pt",
        "--out-history": files / "h.json",
        "--out-info": files / "i.json",
        "--device": "cpu",
        "--quiet": None,
    }
    args.update(over)
    argv = ["unlearn"]
    for k, v in args.items():
        argv += [k] if v is None else [k, str(v)]
    return main(argv)


def test_unlearn_runs_and_writes_outputs(files, monkeypatch):
    for name in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1073741824")
    monkeypatch.setenv("PBU_UNRELATED", "x")
    assert _unlearn(files) == 0
    info = json.loads((files / "i.json").read_text())
    assert info["method"] == "finetune" and info["time_s"] > 0
    assert info["data_access"] == "class id + all retain"
    # the job's own resource record (pbu.jobs.common.resources), with the glibc allocator settings
    # it ran under (the SLURM profile sets MALLOC_* variables; the rest of the env is not kept)
    assert info["cpu_s"] > 0 and info["peak_rss_mb"] > 0 and info["minor_faults"] >= 0
    assert info["malloc_env"] == {"MALLOC_TRIM_THRESHOLD_": "1073741824"}


@pytest.mark.parametrize(
    "over,match",
    [
        ({"--method": "magic"}, "unknown method 'magic'"),
        ({"--forget": "10"}, "forget class 10 is out of range for mnist5k: allowed 0..9"),
        ({"--hparams": "{not json"}, "--hparams is not valid JSON"),
        ({"--hparams": json.dumps({"epochs": 1})}, "missing hyperparameter"),
        (
            {
                "--hparams": json.dumps(
                    {
                        "epochs": 1,
                        "batch_size": 8,
                        "lr": 0.01,
                        "momentum": 0.9,
                        "weight_decay": 0.0,
                        "extra": 1,
                    }
                )
            },
            "unknown hyperparameter",
        ),
    ],
)
def test_bad_arguments_one_line_exit_2(files, capsys, over, match):
    assert _unlearn(files, **over) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pbu: error: ") and match in err[-1]
    assert not (files / "o.pt").exists()


def test_corrupt_checkpoint_is_named(files, capsys):
    (files / "bad.pt").write_bytes(b"\x00" * 100)
    assert _unlearn(files, **{"--model": files / "bad.pt"}) == 2
    assert "bad.pt" in capsys.readouterr().err


def test_pretrain_rejects_negative_lr(files, capsys):
    recipe = json.dumps(
        {"epochs": 1, "batch_size": 8, "optimizer": "adam", "lr": -1, "weight_decay": 0}
    )
    rc = main(
        [
            "pretrain",
            "--data",
            str(files / "d.pt"),
            "--arch",
            "small_cnn",
            "--seed",
            "0",
            "--recipe",
            recipe,
            "--out-model",
            str(files / "p.pt"),
            "--out-info",
            str(files / "p.json"),
            "--device",
            "cpu",
        ]
    )
    assert rc == 2 and "lr must be > 0" in capsys.readouterr().err


def _train(files, command: str, *extra: str) -> dict:
    recipe = json.dumps(
        {"epochs": 1, "batch_size": 8, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0}
    )
    assert (
        main(
            [
                command,
                "--data",
                str(files / "d.pt"),
                "--arch",
                "small_cnn",
                "--seed",
                "0",
                "--recipe",
                recipe,
                "--out-model",
                str(files / "p.pt"),
                "--out-info",
                str(files / "p.json"),
                "--device",
                "cpu",
                "--quiet",
                *extra,
            ]
        )
        == 0
    )
    return json.loads((files / "p.json").read_text())


def test_oracle_command_and_the_deprecated_pretrain_forget(files, caplog):
    info = _train(files, "oracle", "--forget", "2")
    assert info["role"] == "oracle" and info["forget"] == 2 and info["train_samples"] == 36
    assert info["started_at"] <= info["ended_at"]
    # `pbu pretrain --forget` (the oracle's spelling before issue 16) still trains the oracle
    again = _train(files, "pretrain", "--forget", "2")
    assert again["role"] == "oracle" and again["train_samples"] == 36
    assert again["history"] == info["history"]  # the same job, seeded alike
    assert "deprecated: use pbu oracle" in caplog.text
    assert _train(files, "pretrain")["role"] == "original"


def test_oracle_without_forget_is_a_usage_error(files, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "oracle",
                "--data",
                str(files / "d.pt"),
                "--arch",
                "small_cnn",
                "--seed",
                "0",
                "--recipe",
                "{}",
                "--out-model",
                "m",
                "--out-info",
                "i",
            ]
        )
    assert exit_.value.code == 2 and "--forget" in capsys.readouterr().err
