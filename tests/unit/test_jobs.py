"""The pipeline's jobs (pbu/jobs/), called as Python functions on a tiny fixture: no argparse,
no subprocess. Each returns the record it writes, and that record says what happened."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
import yaml

from pbu.checkpoint import load_checkpoint, save_checkpoint
from pbu.data import DATASETS, TensorImages, class_split, load_prepared, save_prepared
from pbu.errors import UsageError
from pbu.models import build_model

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[2] / "config/config.yaml").read_text())
ARGS = {"num_classes": 10, "in_channels": 1, "image_size": 28}
PER_CLASS = 6  # the evaluation's 5-fold loss attack needs 5 per side
FORGET = 2
RECIPE = {"epochs": 1, "batch_size": 16, "optimizer": "adam", "lr": 3e-3, "weight_decay": 0.0}
FINETUNE = {"epochs": 1, "batch_size": 8, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}


def _images(n: int, seed: int) -> TensorImages:
    g = torch.Generator().manual_seed(seed)
    return TensorImages(
        DATASETS["mnist5k"],
        torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
        torch.arange(n) % 10,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A prepared file (60 train / 60 test images, 6 per class) and an untrained small_cnn."""
    tmp = tmp_path_factory.mktemp("jobs")
    save_prepared(tmp / "d.pt", _images(10 * PER_CLASS, 0), _images(10 * PER_CLASS, 1))
    torch.manual_seed(0)
    save_checkpoint(
        tmp / "m.pt", build_model("small_cnn", **ARGS), arch="small_cnn", model_args=ARGS
    )
    return tmp


def _on_disk(path) -> dict:
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------
# pbu.jobs.common
# ------------------------------------------------------------------------------------------


def test_common_device_data_and_resources(files):
    from pbu.jobs import common

    assert common.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device is available here"):
            common.resolve_device("cuda:0")
    with pytest.raises(UsageError, match="forget class 10 is out of range for mnist5k"):
        common.load_data(files / "d.pt", 10)
    with pytest.raises(UsageError, match="memory_format"):
        common.load_model(files / "m.pt", torch.device("cpu"), "sideways")
    rec = common.resources(torch.device("cpu"), 123.0)
    assert rec["started_at"] == 123.0 and rec["ended_at"] >= time.time() - 60
    assert rec["peak_rss_mb"] > 0 and rec["cpu_s"] > 0 and "peak_gpu_mb" not in rec


# ------------------------------------------------------------------------------------------
# pbu.jobs.data
# ------------------------------------------------------------------------------------------


def test_download_stand_in_keeps_more_of_the_forget_class(tmp_path):
    from pbu.jobs.data import download

    out = tmp_path / "s.pt"
    rec = download(
        "mnist5k",
        out,
        stand_in=True,
        max_image_size=16,
        max_train_per_class=3,
        max_test_per_class=2,
        keep_classes=[FORGET],
        keep_per_class=5,
    )
    train, test = load_prepared(out)
    # 9 classes capped at 3 (train) / 2 (test), the forget class at 5
    assert (rec["train_samples"], rec["test_samples"]) == (9 * 3 + 5, 9 * 2 + 5)
    assert (len(train), len(test)) == (rec["train_samples"], rec["test_samples"])
    assert int((train.labels == FORGET).sum()) == 5 and train.spec.image_size == 16
    with pytest.raises(UsageError, match="max_image_size"):
        download("mnist5k", tmp_path / "x.pt", stand_in=True, max_image_size=4)


# ------------------------------------------------------------------------------------------
# pbu.jobs.train
# ------------------------------------------------------------------------------------------


def test_pretrain_and_oracle_records(files, tmp_path):
    from pbu.jobs.train import oracle, pretrain

    before = time.time()
    rec = pretrain(
        files / "d.pt",
        arch="small_cnn",
        seed=0,
        recipe=RECIPE,
        out_model=tmp_path / "p.pt",
        out_info=tmp_path / "p.json",
        device="cpu",
        progress=False,
    )
    assert rec == _on_disk(tmp_path / "p.json")
    assert rec["role"] == "original" and rec["forget"] is None
    assert rec["train_samples"] == 10 * PER_CLASS and len(rec["history"]) == 1
    assert before <= rec["started_at"] <= rec["ended_at"]  # the call's own span by default
    _, ck = load_checkpoint(tmp_path / "p.pt", with_info=True)
    assert ck["meta"]["role"] == "original" and ck["hparams"]["recipe"] == rec["recipe"]

    rec = oracle(
        files / "d.pt",
        forget=FORGET,
        arch="small_cnn",
        seed=0,
        recipe=RECIPE,
        out_model=tmp_path / "o.pt",
        out_info=tmp_path / "o.json",
        device="cpu",
        progress=False,
        started_at=123.0,
    )
    assert rec == _on_disk(tmp_path / "o.json")
    assert rec["role"] == "oracle" and rec["forget"] == FORGET and rec["started_at"] == 123.0
    assert rec["train_samples"] == 9 * PER_CLASS  # never a sample of the forget class
    _, ck = load_checkpoint(tmp_path / "o.pt", with_info=True)
    assert ck["meta"] == {"role": "oracle", "forget": FORGET, "dataset": "mnist5k"}
    with pytest.raises(UsageError, match="recipe: lr must be > 0"):
        pretrain(
            files / "d.pt",
            arch="small_cnn",
            seed=0,
            recipe=dict(RECIPE, lr=-1),
            out_model=tmp_path / "x.pt",
            out_info=tmp_path / "x.json",
            device="cpu",
        )
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------------------------------
# pbu.jobs.fisher
# ------------------------------------------------------------------------------------------


def test_fisher_is_the_forget_class_fisher(files, tmp_path):
    from pbu.fisher import fisher_diagonal
    from pbu.jobs.common import load_fisher
    from pbu.jobs.fisher import fisher

    rec = fisher(
        files / "d.pt",
        model=files / "m.pt",
        forget=FORGET,
        out=tmp_path / "f.pt",
        out_info=tmp_path / "f.json",
        batch_size=4,
        device="cpu",
        memory_format="contiguous",
        progress=False,
    )
    assert rec == _on_disk(tmp_path / "f.json")
    assert rec["samples"] == PER_CLASS and rec["kind"] == "true"
    model = load_checkpoint(files / "m.pt")
    saved = load_fisher(tmp_path / "f.pt", model)
    assert rec["trace"] == pytest.approx(sum(float(v.sum()) for v in saved.values()))
    # the same computation by hand, on the forget class's training samples only
    train, _ = load_prepared(files / "d.pt")
    forget = train.subset(class_split(train.labels, FORGET)[0])
    want = fisher_diagonal(model, forget.loader(4), kind="true", bn_mode="eval")
    for name, f in want.items():
        torch.testing.assert_close(saved[name], f, rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------------
# pbu.jobs.unlearn
# ------------------------------------------------------------------------------------------


def test_unlearn_record_history_and_monitor(files, tmp_path):
    from pbu.jobs.unlearn import unlearn
    from pbu.train import evaluate_accuracy

    rec = unlearn(
        files / "d.pt",
        model=files / "m.pt",
        forget=FORGET,
        method="finetune",
        hparams=FINETUNE,
        seed=0,
        retain_subset=10,
        out_model=tmp_path / "u.pt",
        out_history=tmp_path / "h.json",
        out_info=tmp_path / "u.json",
        device="cpu",
        monitor_every=2,
    )
    assert rec == _on_disk(tmp_path / "u.json")
    assert rec["method"] == "finetune" and rec["hparams"] == FINETUNE
    assert rec["data_access"] == "class id + all retain" and rec["time_s"] > 0
    history = _on_disk(tmp_path / "h.json")["history"]
    # all 54 retain samples, batch 8: 7 steps; the monitor sees steps 0 (before) to 7 every 2
    assert [r["step"] for r in history if "acc_forget_test" in r] == [0, 2, 4, 6]
    _, test = load_prepared(files / "d.pt")
    forget_test = test.subset(class_split(test.labels, FORGET)[0]).loader(64)
    assert history[0]["acc_forget_test"] == pytest.approx(
        evaluate_accuracy(load_checkpoint(files / "m.pt"), forget_test)
    )
    _, ck = load_checkpoint(tmp_path / "u.pt", with_info=True)
    assert ck["meta"] == {"method": "finetune", "forget": FORGET}
    with pytest.raises(UsageError, match="needs the Fisher: give fisher"):
        unlearn(
            files / "d.pt",
            model=files / "m.pt",
            forget=FORGET,
            method="pbu",
            hparams=CONFIG["hparams"]["pbu"],
            seed=0,
            out_model=tmp_path / "x.pt",
            out_history=tmp_path / "x.json",
            out_info=tmp_path / "xi.json",
            device="cpu",
        )
    with pytest.raises(UsageError, match="unknown method 'magic'"):
        unlearn(
            files / "d.pt",
            model=files / "m.pt",
            forget=FORGET,
            method="magic",
            hparams={},
            seed=0,
            out_model=tmp_path / "x.pt",
            out_history=tmp_path / "x.json",
            out_info=tmp_path / "xi.json",
            device="cpu",
        )


def test_monitor_merge_puts_each_steps_accuracies_on_its_row():
    from pbu.jobs.unlearn import AccuracyMonitor

    mon = AccuracyMonitor.__new__(AccuracyMonitor)
    mon.trajectory = [{"step": 0, "acc_forget_test": 90.0}, {"step": 2, "acc_forget_test": 10.0}]
    merged = mon.merge([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    assert merged == [
        {"step": 0, "acc_forget_test": 90.0},
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 0.5, "acc_forget_test": 10.0},
    ]


# ------------------------------------------------------------------------------------------
# pbu.jobs.tune
# ------------------------------------------------------------------------------------------


def test_tune_record(files, tmp_path):
    from pbu.jobs.tune import tune

    hp = dict(CONFIG["hparams"]["neggrad"], epochs=1, batch_size=4)
    kw = {
        "model": files / "m.pt",
        "forget": FORGET,
        "method": "neggrad",
        "hparams": hp,
        "space": {"lr": [1e-3, 3e-3]},
        "budget": 2,
        "threshold": 5.0,
        "seed": 0,
        "out": tmp_path / "t.json",
        "device": "cpu",
        "memory_format": "contiguous",
        "progress": False,
    }
    rec = tune(files / "d.pt", val_fraction=0.5, **kw)
    assert rec == _on_disk(tmp_path / "t.json")
    assert rec["method"] == "neggrad" and len(rec["trials"]) == 2
    assert sorted(t["hparams"]["lr"] for t in rec["trials"]) == [1e-3, 3e-3]
    assert rec["chosen"]["hparams"] in [t["hparams"] for t in rec["trials"]]
    with pytest.raises(UsageError, match=r"val_fraction \(--val-fraction\) must be in \(0, 1\)"):
        tune(files / "d.pt", val_fraction=1.0, **kw)


# ------------------------------------------------------------------------------------------
# pbu.jobs.evaluate
# ------------------------------------------------------------------------------------------


def test_evaluate_record(files, tmp_path):
    from pbu.jobs.evaluate import evaluate
    from pbu.train import evaluate_accuracy

    torch.manual_seed(1)
    other = build_model("small_cnn", **ARGS)
    save_checkpoint(tmp_path / "other.pt", other, arch="small_cnn", model_args=ARGS)
    settings = {"batch_size": 64, "mia_max_samples": None, "relearn": False, "probe": False}
    rec = evaluate(
        files / "d.pt",
        forget=FORGET,
        seed=0,
        original=files / "m.pt",
        oracle=tmp_path / "other.pt",
        models={"mine": tmp_path / "other.pt"},
        settings=settings,
        out=tmp_path / "e.json",
        device="cpu",
        memory_format="contiguous",
    )
    assert rec == _on_disk(tmp_path / "e.json")
    assert set(rec["metrics"]) == {"original", "mine", "oracle"}
    assert rec["data"]["splits"]["forget_train"] == PER_CLASS
    assert rec["settings"]["probe"] is False
    # the original's forget-test accuracy, computed here on the forget class's test images
    _, test = load_prepared(files / "d.pt")
    ft = test.subset(class_split(test.labels, FORGET)[0]).loader(64)
    acc = evaluate_accuracy(load_checkpoint(files / "m.pt"), ft)
    assert rec["metrics"]["original"]["acc_forget_test"] == pytest.approx(acc)
    # the same model under two names scores the same
    assert rec["metrics"]["mine"]["acc_retain_test"] == rec["metrics"]["oracle"]["acc_retain_test"]
    with pytest.raises(UsageError, match="settings: unknown evaluation key"):
        evaluate(
            files / "d.pt",
            forget=FORGET,
            seed=0,
            original=files / "m.pt",
            oracle=files / "m.pt",
            settings={"bogus": 1},
            out=tmp_path / "x.json",
            device="cpu",
        )


# ------------------------------------------------------------------------------------------
# pbu.jobs.results
# ------------------------------------------------------------------------------------------


def test_results_jobs(tmp_path, fake_results):
    import csv

    from pbu.jobs.results import aggregate, report, track

    expected = fake_results(tmp_path / "results")
    paths = aggregate(tmp_path / "agg", results=tmp_path / "results")
    with open(paths["runs"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(expected)
    assert {(r["forget"], r["method"]) for r in rows} == {(k[3], k[4]) for k in expected}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UsageError, match="bad.json: not a JSON file"):
        report(
            tmp_path / "agg",
            reference="ref.csv",
            out_dir=tmp_path / "r",
            settings=tmp_path / "bad.json",
        )
    pytest.importorskip("mlflow")
    with pytest.raises(UsageError, match="127.0.0.1:9"):
        track(
            tracking_uri="http://127.0.0.1:9",
            experiment="t",
            out=tmp_path / "t.json",
            results=tmp_path / "results",
        )


def test_allocator_settings_are_spelled_once_for_local_and_slurm_jobs():
    """The workflow exports pbu.forkserver.MALLOC_ENV (common.smk); the SLURM profile's
    precommand must set exactly the same variables to the same values."""
    import shlex

    from pbu.forkserver import MALLOC_ENV

    root = Path(__file__).resolve().parents[2]
    profile = yaml.safe_load((root / "profiles/slurm/config.yaml").read_text())
    words = shlex.split(profile["precommand"])
    assert words[0] == "export"
    assert dict(w.split("=", 1) for w in words[1:]) == MALLOC_ENV
    common = (root / "workflow/rules/common.smk").read_text()
    assert "from pbu.forkserver import MALLOC_ENV" in common
    assert "os.environ.setdefault(_name, _value)" in common
