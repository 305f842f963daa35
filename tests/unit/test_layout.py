"""pbu/layout.py: every results path is built from one table, parses back to its wildcards, and
the module loads without torch (Snakemake imports it for every dry run)."""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from pathlib import Path

import pytest

from pbu import layout
from pbu.layout import LayoutError

WC = {"dataset": "mnist5k", "arch": "small_cnn", "seed": 3, "forget": 7, "method": "neggrad_plus"}


@pytest.mark.parametrize("name", sorted(layout.FILES))
@pytest.mark.parametrize("root", ["", "res", "/abs/results-test", "../up/res"])
def test_every_file_parses_back_to_its_wildcards_and_root(name, root):
    p = layout.path(name, root, **WC)
    found = layout.parse(p)
    assert found.name == name
    wanted = {k: WC[k] for k in layout.placeholders(layout.FILES[name])}
    assert found.wildcards == wanted
    assert found.root == root.rstrip("/")
    assert str(found.file(name)) == str(Path(p))  # rebuilt exactly as given (relative stays so)


def test_oracle_is_the_model_folder_named_oracle():
    p = layout.path("model", "results", **{**WC, "method": layout.ORACLE})
    assert p == "results/mnist5k/small_cnn/seed3/forget7/oracle/model.pt"
    assert layout.parse(p).wildcards["method"] == "oracle"


def test_known_paths_are_spelled_as_the_readme_says():
    assert (
        layout.path("pretrain_model", "results", **WC)
        == "results/mnist5k/small_cnn/seed3/pretrain/model.pt"
    )
    assert (
        layout.path("tune", "r", **WC) == "r/mnist5k/small_cnn/seed3/forget7/tune/neggrad_plus.json"
    )
    assert layout.path("fisher", "r", **WC) == "r/mnist5k/small_cnn/seed3/forget7/fisher.pt"
    assert layout.path("runs_csv", "r") == "r/aggregate/runs.csv"
    assert layout.glob(layout.FILES["metrics"]) == "*/*/seed*/forget*/metrics.json"


def test_missing_wildcards_stay_snakemake_placeholders():
    assert (
        layout.path("model", "results")
        == "results/{dataset}/{arch}/seed{seed}/forget{forget}/{method}/model.pt"
    )
    assert (
        layout.path("model", "results", method="pbu")
        == "results/{dataset}/{arch}/seed{seed}/forget{forget}/pbu/model.pt"
    )


def test_logs_and_benchmarks_mirror_the_results_paths():
    pairs = {"pretrain": "pretrain_model", "oracle": "model", "unlearn": "model"}
    for job, name in pairs.items():
        out = Path(
            layout.path(
                name, **{**WC, "method": layout.ORACLE if job == "oracle" else WC["method"]}
            )
        )
        assert layout.log(job, "r", **WC) == f"r/logs/{out.parent}.log"
        assert layout.benchmark(job, "r", **WC) == f"r/benchmarks/{out.parent}.tsv"
    tune = Path(layout.path("tune", **WC))
    assert layout.log("tune", "r", **WC) == f"r/logs/{tune.with_suffix('')}.log"
    assert (
        layout.log("fisher", "r", **WC)
        == f"r/logs/{Path(layout.path('fisher', **WC)).with_suffix('')}.log"
    )


def test_a_foreign_path_is_rejected_naming_it():
    with pytest.raises(LayoutError, match=r"/etc/hosts: not a file of the results layout"):
        layout.parse("/etc/hosts")
    metrics = layout.path("metrics", "res", **WC)
    with pytest.raises(LayoutError, match=r"not results/\{dataset\}.*/\{method\}/model\.pt"):
        layout.parse(metrics, "model")
    with pytest.raises(LayoutError, match="not results/.*forget"):  # a seed folder, not a group
        layout.parse(layout.path("seed_dir", "res", **WC), "group_dir")
    with pytest.raises(LayoutError, match="no file 'modle'"):
        layout.parse(metrics, "modle")


def test_bad_wildcards_and_names_are_errors():
    with pytest.raises(LayoutError, match="unknown wildcard 'methd'"):
        layout.path("model", "r", methd="pbu")
    with pytest.raises(LayoutError, match=r"seed='-1' does not match"):
        layout.path("model", "r", seed="-1")
    with pytest.raises(LayoutError, match=r"dataset='a/b'"):
        layout.path("data", "r", dataset="a/b")
    with pytest.raises(LayoutError, match="no file 'checkpoint'.*known: seed_dir"):
        layout.path("checkpoint", "r")
    with pytest.raises(LayoutError, match="no job 'retrian'"):
        layout.log("retrian", "r")


def test_a_relative_group_folder_is_read_from_the_absolute_path(tmp_path, monkeypatch):
    group = Path(layout.path("group_dir", tmp_path / "res", **WC))
    group.mkdir(parents=True)
    monkeypatch.chdir(group)
    found = layout.parse(".", "group_dir")
    assert found.wildcards == {k: WC[k] for k in ("dataset", "arch", "seed", "forget")}
    assert found.file("metrics") == group / "metrics.json"


HEAVY = ("torch", "torchvision", "numpy", "pandas", "mlflow", "sklearn", "matplotlib")


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"importing pbu.layout imported {name}")
        return None


def test_importing_layout_loads_no_torch_pandas_or_mlflow(monkeypatch):
    """A fresh import of pbu.layout with the heavy packages unloaded and refused."""
    for mod in list(sys.modules):
        if mod.split(".")[0] in (*HEAVY, "pbu"):
            monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(sys, "meta_path", [_Refuse(), *sys.meta_path])
    fresh = importlib.import_module("pbu.layout")
    assert fresh is not layout and fresh.path("report", "r") == "r/report.md"
    assert not [m for m in sys.modules if m.split(".")[0] in HEAVY]


@pytest.mark.parametrize("job", sorted(layout.JOBS))
def test_every_jobs_log_and_benchmark_parse_back_to_the_job(job):
    for path in (layout.log(job, "res", **WC), layout.benchmark(job, "/abs/res", **WC)):
        found = layout.parse_job(path)
        assert found.name == job, path
        assert found.wildcards == {k: WC[k] for k in layout.placeholders(layout.JOBS[job])}
        assert found.root in ("res", "/abs/res")


def test_a_job_record_is_found_from_its_benchmark_file():
    found = layout.parse_job(layout.benchmark("oracle", "res", **WC))
    assert found.file("info", method=layout.ORACLE) == Path(
        "res/mnist5k/small_cnn/seed3/forget7/oracle/info.json"
    )
    with pytest.raises(LayoutError, match="not a job's"):
        layout.parse_job("res/benchmarks/mnist5k/small_cnn/seed3.tsv")
    with pytest.raises(LayoutError, match="not a job's"):
        layout.parse_job(layout.path("metrics", "res", **WC))
