"""The forget-score run's `pbu` commands (pbu.cli_forgetting), in-process: each reaches its
job with the arguments given, and bad arguments end in one line with exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pbu import layout
from pbu.cli import main
from pbu.jobs import forget_score as FS

from .test_cli import files  # noqa: F401 (a fixture)


def test_unlearn_batch_runs_every_entry(files, capsys):  # noqa: F811
    hp = {"epochs": 1, "batch_size": 8, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}
    entries = [
        {"method": "finetune", "hparams": hp, "retain_subset": 10, "monitor_every": 0,
         **{f"out_{k}": str(files / f"{name}.{k}") for k in ("model", "history", "info")}}
        for name in ("a", "b")
    ]  # fmt: skip
    entries[1]["variant"], entries[1]["overrides"] = "finetune_fast", {"lr": 0.02}
    argv = ["unlearn-batch", "--data", str(files / "d.pt"), "--model", str(files / "m.pt")]
    argv += ["--forget", "2", "--seed", "1", "--device", "cpu", "--quiet"]
    assert main([*argv, "--entries", json.dumps(entries)]) == 0
    b = json.loads((files / "b.info").read_text())
    assert b["method"] == "finetune_fast" and b["hparams"]["lr"] == 0.02 and b["seed"] == 1
    assert b["batch"] == {"position": 1, "methods": ["finetune", "finetune_fast"]}
    for bad, match in (
        ("{}", "must be a JSON list"),
        ("[1]", "must be a JSON list"),
        ("[", "not valid JSON"),
    ):
        assert main([*argv, "--entries", bad]) == 2
        assert match in capsys.readouterr().err
    assert main([*argv, "--entries", json.dumps([dict(entries[0], lr=1)])]) == 2
    assert "unknown key(s) lr" in capsys.readouterr().err


def test_confidences_needs_seed_path_pairs(files, capsys):  # noqa: F811
    argv = ["confidences", "--data", str(files / "d.pt"), "--forget", "2"]
    argv += ["--out", str(files / "c.npz"), "--device", "cpu"]
    assert main(argv) == 2 and "at least one --oracle" in capsys.readouterr().err
    assert main([*argv, "--oracle", "x=m.pt"]) == 2
    assert "expects SEED=PATH" in capsys.readouterr().err
    assert main([*argv, "--oracle", f"3={files / 'm.pt'}"]) == 2  # the original, no oracle
    assert "not an oracle of class 2" in capsys.readouterr().err


def test_forget_score_command_writes_the_tables(tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for seed in range(3):
        path = layout.path(
            "confidences", tmp_path, dataset="mnist5k", arch="small_cnn", seed=seed, forget=2
        )
        conf = rng.normal(-20, 2, (3, 10))
        FS.write_confidences(
            path, FS.Confidences(["original", "oracle", "pbu"], [seed] * 3, conf, [99.0] * 3,
                                 np.arange(10), 2)
        )  # fmt: skip
        paths.append(path)
    out = tmp_path / "aggregate"
    argv = ["forget-score", "--out-dir", str(out), "--settings", '{"bootstrap": 10}', *paths]
    assert main(argv) == 0
    for name in ("forget_score_csv", "forget_score_images_csv", "forget_score_runs_csv"):
        assert (out / layout.FILES[name].split("/")[-1]).stat().st_size > 0
    record = json.loads((out / "forget_score.json").read_text())
    assert record["settings"]["bootstrap"] == 10 and record["confidences"] == 3
    assert record["cpu_s"] > 0 and record["started_at"] <= record["ended_at"]
    assert main([*argv[:3], "--settings", '{"boot": 1}', *paths]) == 2
    assert "unknown forget-score key(s) boot" in capsys.readouterr().err
    assert main(["forget-score", "--out-dir", str(out), paths[0]]) == 2  # one seed
    assert "at least 2 seeds" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["unlearn-batch", "confidences", "forget-score"])
def test_the_commands_are_in_the_help(command, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert command in capsys.readouterr().out
