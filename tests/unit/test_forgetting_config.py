"""config/forgetting.yaml (the forget-score run) and its N = 4 overlay as Snakemake merges them,
and the checks of config evaluation.forget_score."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pbu.config import ConfigError, check_config, method_hparams
from pbu.evaluation import EvalSettings

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config/config.yaml").read_text())


def _merged(*files: str, tmp_path: Path, mutate=None) -> dict:
    from snakemake.utils import update_config

    c = copy.deepcopy(DEFAULT)
    for f in files:
        update_config(c, yaml.safe_load((ROOT / f).read_text()))
    if mutate:
        mutate(c)
    c["results"] = str(tmp_path / "results")
    return check_config(c, SCHEMA)


def test_the_forgetting_config_is_the_issues_run(tmp_path):
    c = _merged("config/forgetting.yaml", tmp_path=tmp_path)
    fs = c["evaluation"]["forget_score"]
    assert c["dataset"] == "mnist5k" and c["archs"] == ["small_cnn"] and c["forget"] == [2, 6, 8]
    assert c["seeds"] == list(range(32)) and fs["enabled"] is True
    assert fs["ceiling_seeds"] == list(range(32, 64))
    # every method and PBU variant of the default run, and PBU at three stop thresholds
    assert set(DEFAULT["methods"]) < set(c["methods"])
    for name, threshold in (("pbu_stop0", 0.0), ("pbu_stop2", 2.0), ("pbu_stop5", 5.0)):
        assert name in c["methods"] and c["variants"][name]["hparams"] == {
            "stop_threshold": threshold
        }
        assert method_hparams(c, name) == {**c["hparams"]["pbu"], "stop_threshold": threshold}
    assert len(c["methods"]) == 18
    # lighter evaluation (said in the file), batched unlearning, no trajectories
    assert c["evaluation"]["relearn"] is False and c["evaluation"]["probe"] is False
    assert c["unlearn_batch"] is True and c["monitor"]["every"] == 0
    # the same models as the default run: recipe and hyperparameters untouched
    assert c["pretrain"] == DEFAULT["pretrain"] and c["hparams"] == DEFAULT["hparams"]
    assert yaml.safe_load((ROOT / "config/forgetting.yaml").read_text())["results"] == (
        "results/forgetting"
    )


def test_the_n4_overlay_keeps_everything_but_the_seeds(tmp_path):
    full = _merged("config/forgetting.yaml", tmp_path=tmp_path)
    n4 = _merged("config/forgetting.yaml", ".test/forgetting-n4.yaml", tmp_path=tmp_path)
    assert n4["seeds"] == [0, 1, 2, 3]
    assert n4["evaluation"]["forget_score"]["ceiling_seeds"] == [4, 5, 6, 7]
    for key in ("methods", "forget", "variants", "hparams", "unlearn_batch", "monitor"):
        assert n4[key] == full[key], key
    assert n4["evaluation"]["relearn"] is False


def test_the_default_run_has_no_forget_score_and_stays_unbatched(tmp_path):
    c = _merged(tmp_path=tmp_path)
    assert c["evaluation"]["forget_score"]["enabled"] is False
    assert c["unlearn_batch"] is False and c["seeds"] == [0, 1, 2]
    assert c["evaluation"]["mia_valid_fraction"] == 0.25


@pytest.mark.parametrize(
    "mutate, match",
    [
        (
            lambda c: c.update(seeds=[0]),
            r"evaluation\.forget_score\.enabled: .* at least 2 seeds",
        ),
        (
            lambda c: c["evaluation"]["forget_score"].update(ceiling_seeds=[3, 40, 41, 42]),
            r"evaluation\.forget_score\.ceiling_seeds: \[3\] are also in seeds",
        ),
        (
            lambda c: c["evaluation"]["forget_score"].update(ceiling_seeds=[4, 5]),
            r"evaluation\.forget_score\.ceiling_seeds: 2 seeds, but .* as seeds \(4\)",
        ),
        (
            lambda c: c["evaluation"]["forget_score"].update(cap=3),
            r"evaluation\.forget_score:.*'cap' was unexpected",
        ),
        (
            lambda c: c["evaluation"].update(mia_valid_fraction=1.0),
            r"evaluation\.mia_valid_fraction",
        ),
    ],
)
def test_bad_forget_score_settings_name_the_key(tmp_path, mutate, match):
    with pytest.raises(ConfigError, match=match):
        _merged(
            "config/forgetting.yaml", ".test/forgetting-n4.yaml", tmp_path=tmp_path, mutate=mutate
        )


def test_the_evaluation_settings_leave_the_forget_score_to_its_stage():
    s = EvalSettings.from_dict(DEFAULT["evaluation"])
    assert s.mia_valid_fraction == 0.25 and not hasattr(s, "forget_score")
    with pytest.raises(ValueError, match="unknown evaluation key"):
        EvalSettings.from_dict({"forget_scor": {}})
