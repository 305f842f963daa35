"""The jobs of the forget-score run, called as Python functions on a tiny fixture: several
methods in one job (pbu.jobs.unlearn_batch) write what one job per method writes, the evaluation
saves each model's per-example confidences, and the ceiling's job writes them for oracles of
further seeds (pbu.jobs.evaluate)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pbu import metrics as M
from pbu.checkpoint import load_checkpoint, save_checkpoint
from pbu.data import TensorImages, class_split, load_prepared, save_prepared
from pbu.errors import UsageError
from pbu.evaluation import EvalData
from pbu.jobs.forget_score import read_confidences
from pbu.jobs.unlearn_batch import _cpu_s
from pbu.models import build_model
from pbu.registry import DATASETS

from .test_jobs import ARGS, CONFIG, FINETUNE, FORGET, PER_CLASS


def _images(n: int, seed: int) -> TensorImages:
    g = torch.Generator().manual_seed(seed)
    return TensorImages(
        DATASETS["mnist5k"],
        torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
        torch.arange(n) % 10,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A prepared file (60 train / 60 test images), an untrained small_cnn, its Fisher."""
    from pbu.jobs.fisher import fisher

    tmp = tmp_path_factory.mktemp("batch")
    save_prepared(tmp / "d.pt", _images(10 * PER_CLASS, 0), _images(10 * PER_CLASS, 1))
    torch.manual_seed(0)
    save_checkpoint(
        tmp / "m.pt", build_model("small_cnn", **ARGS), arch="small_cnn", model_args=ARGS
    )
    fisher(
        tmp / "d.pt",
        model=tmp / "m.pt",
        forget=FORGET,
        out=tmp / "f.pt",
        out_info=tmp / "f.json",
        seed=0,
        device="cpu",
        progress=False,
    )
    return tmp


def _entries(out, fisher):
    pbu = dict(CONFIG["hparams"]["pbu"], epochs=2, check_samples=0)
    return [
        {
            "method": "pbu",
            "hparams": pbu,
            "fisher": str(fisher),
            "monitor_every": 1,
            "monitor_retain": 20,
        },
        {"method": "finetune", "hparams": FINETUNE, "retain_subset": 10, "monitor_every": 0},
        {
            "method": "pbu",
            "variant": "pbu_stop0",
            "overrides": {"stop_threshold": 0.0},
            "hparams": pbu,
            "fisher": str(fisher),
            "monitor_every": 0,
        },
        {
            "method": "random_labels",
            "hparams": CONFIG["hparams"]["random_labels"],
            "monitor_every": 0,
        },
    ]


def _outputs(entry, out):
    name = entry.get("variant") or entry["method"]
    return {k: str(out / f"{name}.{k}") for k in ("out_model", "out_history", "out_info")}


def test_one_job_for_several_methods_writes_what_one_job_each_writes(files, tmp_path):
    """Every method's model (to the bit), history and record (but its CPU seconds, span and
    ``batch``) are those of its own job, whatever ran before it in the process."""
    from pbu.jobs.unlearn import unlearn
    from pbu.jobs.unlearn_batch import unlearn_batch

    alone, batch = tmp_path / "alone", tmp_path / "batch"
    entries = _entries(alone, files / "f.pt")
    for e in reversed(entries):  # another order, another history of the process's RNGs
        torch.manual_seed(123)
        np.random.seed(123)
        unlearn(
            files / "d.pt",
            model=files / "m.pt",
            forget=FORGET,
            seed=3,
            device="cpu",
            **e,
            **_outputs(e, alone),
        )
    torch.manual_seed(999)
    cpu0 = _cpu_s()
    records = unlearn_batch(
        files / "d.pt",
        model=files / "m.pt",
        forget=FORGET,
        seed=3,
        entries=[dict(e, **_outputs(e, batch)) for e in entries],
        device="cpu",
    )
    assert [r["method"] for r in records] == ["pbu", "finetune", "pbu_stop0", "random_labels"]
    volatile = {"cpu_s", "started_at", "ended_at", "time_s", "time_per_epoch_s", "peak_rss_mb",
                "minor_faults", "batch", "fork_server"}  # fmt: skip
    for e in entries:
        a, b = _outputs(e, alone), _outputs(e, batch)
        ma, mb = load_checkpoint(a["out_model"]), load_checkpoint(b["out_model"])
        for (name, pa), pb in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(pa, pb), (e.get("variant") or e["method"], name)
        ha, hb = (json.loads(open(p["out_history"]).read()) for p in (a, b))
        strip = lambda h: [{k: v for k, v in r.items() if "time" not in k} for r in h["history"]]
        assert strip(ha) == strip(hb)
        ra, rb = (json.loads(open(p["out_info"]).read()) for p in (a, b))
        assert {k: v for k, v in ra.items() if k not in volatile} == {
            k: v for k, v in rb.items() if k not in volatile
        }
        assert rb["batch"]["methods"] == ["pbu", "finetune", "pbu_stop0", "random_labels"]
    # each record states its own CPU seconds and span, not the process's so far (the first
    # also carries the process's start-up, here the whole test session's)
    spent = _cpu_s() - cpu0
    assert all(r["cpu_s"] > 0 for r in records) and sum(r["cpu_s"] for r in records[1:]) <= spent
    starts = [r["started_at"] for r in records]
    assert all(a < b for a, b in zip(starts, starts[1:]))
    assert all(r["ended_at"] <= s for r, s in zip(records, starts[1:]))


def test_a_bad_entry_is_refused_before_any_method_runs(files, tmp_path):
    from pbu.jobs.unlearn_batch import unlearn_batch

    good = dict(_entries(tmp_path, files / "f.pt")[1], **_outputs({"method": "ft"}, tmp_path))
    with pytest.raises(UsageError, match="unknown key"):
        unlearn_batch(
            files / "d.pt",
            model=files / "m.pt",
            forget=FORGET,
            seed=0,
            entries=[good, dict(good, lr=1.0)],
            device="cpu",
        )
    assert not (tmp_path / "ft.out_model").exists()


def test_evaluate_saves_each_models_confidences_on_the_forget_train_images(files, tmp_path):
    from pbu.jobs.evaluate import evaluate

    torch.manual_seed(1)
    save_checkpoint(
        tmp_path / "o.pt", build_model("small_cnn", **ARGS), arch="small_cnn", model_args=ARGS
    )
    settings = {"batch_size": 64, "mia_max_samples": None, "relearn": False, "probe": False}
    rec = evaluate(
        files / "d.pt",
        forget=FORGET,
        seed=4,
        original=files / "m.pt",
        oracle=tmp_path / "o.pt",
        models={"mine": tmp_path / "o.pt"},
        settings=settings,
        out=tmp_path / "e.json",
        out_confidences=tmp_path / "c.npz",
        device="cpu",
        memory_format="contiguous",
    )
    conf = read_confidences(tmp_path / "c.npz")
    assert sorted(conf.model) == ["mine", "oracle", "original"] and set(conf.seed) == {4}
    train, test = load_prepared(files / "d.pt")
    f_idx = class_split(train.labels, FORGET)[0]
    np.testing.assert_array_equal(conf.index, f_idx.numpy())
    images = train.subset(f_idx)
    for name, path in (("original", files / "m.pt"), ("oracle", tmp_path / "o.pt")):
        logits = load_checkpoint(path)(images.loader(64).__iter__().__next__()[0]).double()
        want = M.logit_confidence(logits, torch.full((len(f_idx),), FORGET))
        got = conf.confidence[conf.model.index(name)]
        np.testing.assert_allclose(got, want, atol=1e-4)  # BN folded at inference
        assert (
            conf.acc_retain_test[conf.model.index(name)] == rec["metrics"][name]["acc_retain_test"]
        )


def test_the_ceiling_job_writes_the_same_format_for_oracles_of_further_seeds(files, tmp_path):
    from pbu.jobs.evaluate import confidences
    from pbu.jobs.train import oracle

    recipe = {"epochs": 1, "batch_size": 16, "optimizer": "adam", "lr": 3e-3,
              "weight_decay": 0.0}  # fmt: skip
    paths = {}
    for seed in (7, 5):
        paths[seed] = tmp_path / f"o{seed}.pt"
        oracle(
            files / "d.pt",
            forget=FORGET,
            arch="small_cnn",
            seed=seed,
            recipe=recipe,
            out_model=paths[seed],
            out_info=tmp_path / f"o{seed}.json",
            device="cpu",
            progress=False,
        )
    confidences(files / "d.pt", forget=FORGET, models=paths, out=tmp_path / "c.npz", device="cpu")
    conf = read_confidences(tmp_path / "c.npz")
    assert conf.model == ["oracle", "oracle"] and conf.seed == [5, 7] and conf.forget == FORGET
    train, test = load_prepared(files / "d.pt")
    data = EvalData.build(train, test, FORGET)
    net = load_checkpoint(paths[5])
    logits = net(next(iter(data.forget_train.loader(64)))[0]).double()
    np.testing.assert_allclose(conf.confidence[0], M.logit_confidence(logits, logits.new_full(
        (len(logits),), FORGET).long()), atol=1e-4)  # fmt: skip
    assert conf.acc_retain_test[0] == pytest.approx(
        M.accuracy(net, data.retain_test.loader(64)), abs=1e-9
    )
    with pytest.raises(UsageError, match="not an oracle of class"):
        confidences(
            files / "d.pt", forget=FORGET, models={1: files / "m.pt"}, out=tmp_path / "x.npz"
        )
