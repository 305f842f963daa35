"""The README's "use it on your own model" example, run as written on real digits."""

from __future__ import annotations

import pytest
import torch

import pbu
from pbu.data import class_split


def test_public_api_is_exposed():
    for name in ("fisher_diagonal", "unlearn_pbu", "PBUConfig", "evaluate", "load_checkpoint",
                 "save_checkpoint", "run_method", "available_methods", "build_model",
                 "load_dataset", "train_model"):
        assert callable(getattr(pbu, name)) or isinstance(getattr(pbu, name), type), name
    with pytest.raises(AttributeError):
        pbu.no_such_thing  # noqa: B018


def test_readme_example(mnist5k, pretrained_small_cnn, tmp_path):
    train, test = mnist5k
    trained, _ = pretrained_small_cnn
    pbu.save_checkpoint(tmp_path / "m.pt", trained, arch="small_cnn",
                        model_args={"num_classes": 10, "in_channels": 1, "image_size": 28})
    model = pbu.load_checkpoint(tmp_path / "m.pt")
    c = 6
    forget_loader = train.subset(class_split(train.labels, c)[0]).loader(64, shuffle=True)
    forget_test_loader = test.subset(class_split(test.labels, c)[0]).loader(500)
    retain_test_loader = test.subset(class_split(test.labels, c)[1]).loader(500)

    fisher = pbu.fisher_diagonal(model, forget_loader, kind="true")
    cfg = pbu.PBUConfig(alpha=631, beta=100, gamma=4001, lr=1e-3, batch_size=64, epochs=5,
                        bn_mode="train", stop_rule="forget_acc", stop_threshold=5.0,
                        check_every=1)
    before = [p.detach().clone() for p in model.parameters()]
    result = pbu.unlearn_pbu(model, forget_loader, fisher, cfg)
    scores = pbu.evaluate(result.model, forget_test_loader, retain_test_loader)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # θ* untouched
    assert result.info["stop_step"] is not None
    assert scores["acc_forget_test"] <= 10.0
    base = pbu.evaluate(model, forget_test_loader, retain_test_loader)
    assert base["acc_forget_test"] > 90.0


def test_run_method_hands_only_declared_data(mnist5k, pretrained_small_cnn):
    train, _ = mnist5k
    model, _ = pretrained_small_cnn
    import yaml
    from pathlib import Path

    config = yaml.safe_load((Path(__file__).parents[1] / "config/config.yaml").read_text())
    result, seconds = pbu.run_method("neggrad", model, train, 2, config["hparams"]["neggrad"])
    assert seconds > 0 and result.model is not model
    assert set(pbu.available_methods()) == set(config["hparams"])
