"""Config validation: every bad key or value is stopped with one line naming it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pbu.config import ConfigError, check_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
DEFAULT = yaml.safe_load((ROOT / "config/config.yaml").read_text())


def _check(mutate, tmp_path):
    c = copy.deepcopy(DEFAULT)
    c["results"] = str(tmp_path / "results")
    mutate(c)
    return check_config(c, SCHEMA)


def test_default_config_is_valid(tmp_path):
    c = _check(lambda c: None, tmp_path)
    assert c["forget"] == [2, 6, 8] and c["dataset"] == "mnist5k"


def test_forget_all_expands_to_every_class(tmp_path):
    c = _check(lambda c: c.update(dataset="cifar100", forget="all"), tmp_path)
    assert c["forget"] == list(range(100))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda c: c.update(bogus=1), r"config key <top level>:.*'bogus' was unexpected"),
        (lambda c: c["pretrain"].update(lr=-0.1), r"config key pretrain\.lr: -0\.1"),
        (
            lambda c: c["pretrain"].update(epochs="5"),
            r"config key pretrain\.epochs: '5' is not of type",
        ),
        (
            lambda c: c.update(forget=[10]),
            r"config key forget: class 10 is out of range for mnist5k; allowed 0\.\.9",
        ),
        (
            lambda c: c.update(methods=["pbu", "magic"]),
            r"config key methods\.1: 'magic' is neither a method",
        ),
        (lambda c: c.update(archs=["vgg"]), r"config key archs\.0: 'vgg' is not one of"),
        (lambda c: c.update(dataset="imagenet"), r"config key dataset: 'imagenet' is not one of"),
        (
            lambda c: c["hparams"]["pbu"].pop("gamma"),
            r"config key hparams\.pbu: 'gamma' is a required",
        ),
        (
            lambda c: c["hparams"]["pbu"].update(gama=1),
            r"config key hparams\.pbu:.*'gama' was unexpected",
        ),
        (
            lambda c: c["hparams"]["pbu"].update(stop_rule="never"),
            r"hparams\.pbu\.stop_rule: 'never'",
        ),
        (
            lambda c: c["mlflow"].update(tracking_uri="mysql://x"),
            r"config key mlflow\.tracking_uri",
        ),
        (lambda c: c["model"].update(weights="imagenet"), r"config key model\.weights: imagenet"),
        (lambda c: c["data"].update(max_image_size=32), r"config key data\.max_image_size"),
    ],
)
def test_bad_values_name_the_key(tmp_path, mutate, match):
    with pytest.raises(ConfigError, match=match):
        _check(mutate, tmp_path)


def test_unwritable_results_refused(tmp_path):
    """A results path under a regular file can never be created, even by root."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="config key results: cannot write to .*file/results"):
        _check(lambda c: c.update(results=str(blocker / "results")), tmp_path)


def test_config_readme_documents_every_key():
    from pbu.config import schema_markdown

    expected = schema_markdown(SCHEMA, DEFAULT)
    assert (ROOT / "config/README.md").read_text() == expected, (
        "config/README.md is stale: run `python -m pbu.config > config/README.md`"
    )
    schema = yaml.safe_load(SCHEMA.read_text())

    def keys(node, prefix=""):
        for k, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"schema key {prefix}{k} has no description"
            yield f"{prefix}{k}"
            yield from keys(sub, f"{prefix}{k}.")

    text = (ROOT / "config/README.md").read_text()
    for k in keys(schema):
        assert f"`{k}`" in text


@pytest.mark.parametrize(
    "stem,archs,match",
    [
        (
            "vgg",
            ["resnet18"],
            r"config key model\.stem: 'vgg' is not one of \['imagenet', 'cifar'\]",
        ),
        (
            {"resnet18": "imagenet"},
            ["resnet18", "resnet50"],
            r"config key model\.stem: no stem for resnet50: the mapping names only resnet18",
        ),
        (
            {"small_cnn": "cifar"},
            ["small_cnn"],
            r"config key model\.stem: 'small_cnn' is not one of \['resnet18'",
        ),
        (
            {"resnet18": "big"},
            ["resnet18"],
            r"config key model\.stem\.resnet18: 'big' is not one of",
        ),
        (
            "imagenet",
            ["densenet121"],
            r"config key model\.stem: densenet121 with the imagenet stem "
            r"cannot process 28-pixel images.*use cifar",
        ),
    ],
)
def test_bad_stem_names_the_key(tmp_path, stem, archs, match):
    def mutate(c):
        c["model"]["stem"] = stem
        c["archs"] = archs

    with pytest.raises(ConfigError, match=match):
        _check(mutate, tmp_path)


def test_stem_mapping_gives_each_arch_its_own(tmp_path):
    c = _check(
        lambda c: c.update(
            archs=["small_cnn", "resnet18", "densenet121"],
            model={"weights": "none", "stem": {"resnet18": "imagenet", "densenet121": "cifar"}},
        ),
        tmp_path,
    )
    assert c["model"]["stem"]["densenet121"] == "cifar"


def test_stem_is_checked_on_the_stand_in_image_size(tmp_path):
    """ConvNeXt's ImageNet stem needs 32 px: stand-in images capped at 16 px must fail the plan,
    not the pretrain job; the small-image stem (the smoke overlay's) fits."""

    def mutate(stem):
        def m(c):
            c.update(dataset="cifar10", archs=["convnext_large"])
            c["model"].update(weights="none", stem=stem)
            c["data"].update(stand_in=True, max_image_size=16)

        return m

    with pytest.raises(ConfigError, match=r"model\.stem: convnext_large .* 16-pixel images"):
        _check(mutate("imagenet"), tmp_path)
    assert _check(mutate("cifar"), tmp_path)["model"]["stem"] == "cifar"


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "config" / "paper").glob("*.yaml")))
def test_every_paper_config_is_valid_alone_and_under_the_smoke_overlay(name, tmp_path):
    """What `snakemake --configfile config/paper/<name>.yaml [config/smoke.yaml]` validates,
    without starting snakemake: the smoke set (tests/e2e, CI only) must not be the first to
    find a config that cannot run."""
    from snakemake.utils import update_config

    paper = yaml.safe_load((ROOT / "config" / "paper" / f"{name}.yaml").read_text())
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    for overlays in ([paper], [paper, smoke]):
        c = copy.deepcopy(DEFAULT)
        for o in overlays:
            update_config(c, copy.deepcopy(o))
        c["results"] = str(tmp_path / "results")
        checked = check_config(c, SCHEMA)
        assert checked["dataset"] == paper["dataset"]
