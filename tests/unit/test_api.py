"""The README's "use it on your own model" example, run as written on real digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import pbu
from pbu.data import class_split

CONFIG = yaml.safe_load((Path(__file__).parents[2] / "config/config.yaml").read_text())


def test_public_api_is_exposed():
    for name in (
        "fisher_diagonal",
        "unlearn_pbu",
        "PBUConfig",
        "evaluate",
        "load_checkpoint",
        "save_checkpoint",
        "run_method",
        "available_methods",
        "build_model",
        "load_dataset",
        "train_model",
    ):
        assert callable(getattr(pbu, name)) or isinstance(getattr(pbu, name), type), name
    with pytest.raises(AttributeError):
        pbu.no_such_thing  # noqa: B018


def test_pbu_evaluate_is_the_function_whatever_is_imported():
    """``pbu.evaluate`` is the public function of :mod:`pbu.api`. No submodule of that name may
    exist: importing it (the CLI, the fork server, a ``from pbu.x import ...``) would bind the
    module as the package attribute and turn ``pbu.evaluate(model, ...)`` into "'module' object
    is not callable" (issue 16, item 6)."""
    import importlib
    import pkgutil

    from pbu import forkserver
    from pbu.api import evaluate

    assert "evaluate" not in {m.name for m in pkgutil.iter_modules(pbu.__path__)}
    for name in (
        "pbu.evaluation",
        "pbu.cli",
        "pbu.jobs.evaluate",
        *(m for m in forkserver.PRELOAD if m.startswith("pbu.")),
    ):
        importlib.import_module(name)
        assert pbu.evaluate is evaluate, name
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    forget = [(torch.randn(5, 1, 2, 2), torch.zeros(5, dtype=torch.long))]
    retain = [(torch.randn(7, 1, 2, 2), torch.tensor([1, 2] * 3 + [1]))]
    scores = pbu.evaluate(model, forget, retain)
    assert set(scores) == {"acc_forget_test", "acc_retain_test"}


def test_readme_example(mnist5k, pretrained_small_cnn, tmp_path):
    train, test = mnist5k
    trained, _ = pretrained_small_cnn
    pbu.save_checkpoint(
        tmp_path / "m.pt",
        trained,
        arch="small_cnn",
        model_args={"num_classes": 10, "in_channels": 1, "image_size": 28},
    )
    model = pbu.load_checkpoint(tmp_path / "m.pt")
    c = 6
    forget_loader = train.subset(class_split(train.labels, c)[0]).loader(64, shuffle=True)
    forget_test_loader = test.subset(class_split(test.labels, c)[0]).loader(500)
    retain_test_loader = test.subset(class_split(test.labels, c)[1]).loader(500)

    fisher = pbu.fisher_diagonal(model, forget_loader, kind="true")
    cfg = pbu.PBUConfig(
        alpha=631,
        beta=100,
        gamma=4001,
        lr=1e-4,
        batch_size=64,
        epochs=68,
        bn_mode="train",
        stop_rule="forget_acc",
        stop_threshold=5.0,
        check_every=1,
        check_samples=0,
        fisher_scale="none",
    )
    before = [p.detach().clone() for p in model.parameters()]
    result = pbu.unlearn_pbu(model, forget_loader, fisher, cfg)
    scores = pbu.evaluate(result.model, forget_test_loader, retain_test_loader)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # θ* untouched
    assert result.info["stop_step"] is not None
    assert scores["acc_forget_test"] <= 10.0
    base = pbu.evaluate(model, forget_test_loader, retain_test_loader)
    assert base["acc_forget_test"] > 90.0


@pytest.mark.parametrize("name,retain_subset", [("neggrad", 0), ("neggrad_plus", 1000)])
def test_run_method_hands_only_declared_data(
    name, retain_subset, mnist5k, pretrained_small_cnn, monkeypatch
):
    """What the method receives through ``run_method`` is the forget class's training samples
    and, if it declares one, a retain subset of the asked size without that class: nothing else.
    And it does unlearn: the returned model no longer recognises the class."""
    from pbu import methods
    from pbu.train import evaluate_accuracy

    train, test = mnist5k
    model, _ = pretrained_small_cnn
    c = 2
    got: dict = {}
    real_run = methods.run

    def spy(method, m, inputs, hp, **kwargs):
        got.update(model=m, inputs=inputs)
        return real_run(method, m, inputs, hp, **kwargs)

    monkeypatch.setattr(methods, "run", spy)
    before = [p.detach().clone() for p in model.parameters()]
    result, seconds = pbu.run_method(
        name, model, train, c, CONFIG["hparams"][name], retain_subset=retain_subset, seed=0
    )
    inputs = got["inputs"]
    n_forget = int((train.labels == c).sum())
    assert (
        inputs.forget is not None
        and len(inputs.forget) == n_forget
        and set(inputs.forget.labels.tolist()) == {c}
    ), (
        f"{name} was handed {len(inputs.forget or [])} forget images, not the {n_forget} of "
        f"class {c}"
    )
    if retain_subset:
        assert (
            inputs.retain is not None
            and len(inputs.retain) == retain_subset
            and c not in inputs.retain.labels.tolist()
        ), f"{name} was handed a retain set that is not {retain_subset} images without class {c}"
    else:
        assert inputs.retain is None, f"{name} declares no retained data but was handed some"
    assert inputs.fisher is None, f"{name} was handed a Fisher it does not declare"
    assert got["model"] is not model, "the method was handed the caller's model, not a copy"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), (
        "run_method modified the caller's model"
    )
    forget_test = test.subset(class_split(test.labels, c)[0]).loader(500)
    acc_before = evaluate_accuracy(model, forget_test)
    acc_after = evaluate_accuracy(result.model, forget_test)
    assert acc_before > 90 and acc_after < acc_before - 50, (
        f"{name} through run_method left forget-test accuracy at {acc_after:.1f} % "
        f"(original {acc_before:.1f} %): it did not unlearn class {c}"
    )
    assert seconds > 0


def test_available_methods_are_the_configured_ones():
    assert set(pbu.available_methods()) == set(CONFIG["hparams"])
