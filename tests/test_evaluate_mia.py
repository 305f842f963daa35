"""pbu.evaluation.evaluate_models as a joint: which sets reach each MIA, and which model's accuracy
sets the Anamnesis target. Hand-made logits per split (issue 13, items 2 and 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pbu import evaluation as E
from pbu import metrics as M

K = 10
NO_DEPTH = E.EvalSettings(batch_size=64, mia_max_samples=None, relearn=False, probe=False)


class Scripted(nn.Module):
    """A stand-in model whose outputs per split are given by hand (see ``scripted``)."""

    def __init__(self, outputs: dict[str, torch.Tensor]):
        super().__init__()
        self.outputs = outputs
        self.lin = nn.Linear(1, 1)


def _peaked(n: int, rng: np.random.Generator, height: float) -> torch.Tensor:
    logits = 0.05 * rng.standard_normal((n, K))
    logits[:, 0] += height
    return torch.tensor(logits)


def _confident(n: int, rng: np.random.Generator) -> torch.Tensor:
    logits = 0.1 * rng.standard_normal((n, K))
    logits[np.arange(n), rng.integers(1, K, n)] += 20.0  # entropy ~0
    return torch.tensor(logits)


def _flat(n: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.tensor(0.1 * rng.standard_normal((n, K)))  # entropy ~ln 10


@pytest.fixture
def eval_data(square_images):
    train, test = square_images(K, 10, seed=0), square_images(K, 30, seed=1)
    return E.EvalData.build(train, test, forget_class=0)


def scripted(monkeypatch, data: E.EvalData, logits: dict[str, torch.Tensor]) -> Scripted:
    """A model whose outputs on ``data``'s splits are ``logits`` (labels from the data)."""
    model = Scripted({s: (logits[s], getattr(data, s).labels.clone(), None) for s in E.SPLITS})
    monkeypatch.setattr(E, "model_outputs", lambda m, *_a, **_k: m.outputs)
    return model


def _rows(monkeypatch, data, logits):
    model = scripted(monkeypatch, data, logits)
    torch.manual_seed(0)
    incompetent = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, K))
    return E.evaluate_models({"m": model}, model, incompetent, data, 0, settings=NO_DEPTH,
                             seed=0)["m"]


def test_each_mia_gets_its_sets_in_their_roles(monkeypatch, eval_data):
    """Members retain-train (entropy ~0), non-members retain-test (~ln 10); the forget class,
    train and test, at ~0.34: ours calls forget-train "member", Bad Teaching's sets (whole test
    split, so forget-test among the non-members) do not."""
    rng = np.random.default_rng(0)
    n = {s: len(getattr(eval_data, s)) for s in E.SPLITS}
    logits = {"retain_train": _confident(n["retain_train"], rng),
              "retain_test": _flat(n["retain_test"], rng),
              "forget_train": _peaked(n["forget_train"], rng, 5.0),
              "forget_test": _peaked(n["forget_test"], rng, 5.0)}
    row = _rows(monkeypatch, eval_data, logits)
    rtr, rte, ftr, fte = (logits[s] for s in ("retain_train", "retain_test", "forget_train",
                                              "forget_test"))
    assert row["mia_entropy_svc"] == M.mia_entropy_svc(rtr, rte, ftr, seed=0)
    assert row["mia_entropy_svc_bad_teaching"] == M.mia_entropy_svc(
        rtr, torch.cat([rte, fte]), ftr, seed=0)
    # the case tells the wirings apart: each wrong one gives another number
    assert (row["mia_entropy_svc"], row["mia_entropy_svc_bad_teaching"]) == (1.0, 0.0)
    assert M.mia_entropy_svc(rte, rtr, ftr, seed=0) == 0.0  # members <-> non-members


def test_the_forget_train_samples_are_the_targets(monkeypatch, eval_data):
    """Forget-train like the non-members, forget-test like the members: the fraction called
    member is 0 only if the attack is applied to forget-TRAIN."""
    rng = np.random.default_rng(1)
    n = {s: len(getattr(eval_data, s)) for s in E.SPLITS}
    logits = {"retain_train": _confident(n["retain_train"], rng),
              "retain_test": _flat(n["retain_test"], rng),
              "forget_train": _flat(n["forget_train"], rng),
              "forget_test": _confident(n["forget_test"], rng)}
    row = _rows(monkeypatch, eval_data, logits)
    assert row["mia_entropy_svc"] == 0.0
    assert M.mia_entropy_svc(logits["retain_train"], logits["retain_test"],
                             logits["forget_test"], seed=0) == 1.0


def test_anamnesis_target_is_the_original_models_forget_accuracy(square_images, square_cnn):
    """The published Anamnesis Index: relearn until within alpha % of the ORIGINAL model's
    forget-test accuracy, for every model (the oracle included), then divide by the oracle's."""
    num_classes = 4
    train, test = square_images(num_classes, 30, seed=0), square_images(num_classes, 10, seed=1)
    original = square_cnn(train, num_classes)
    torch.manual_seed(1)
    from pbu.models import SmallCNN

    oracle = SmallCNN(num_classes, 1, 28, width=4, hidden=16)  # knows nothing of class 0
    data = E.EvalData.build(train, test, forget_class=0)
    settings = E.EvalSettings(batch_size=64, relearn_samples=16, relearn_batch_size=8,
                              relearn_lr=1e-2, relearn_max_steps=60, anamnesis_alpha=10.0,
                              relearn_threshold=20.0, probe=False)
    rows = E.evaluate_models({"original": original}, oracle, SmallCNN(num_classes, 1, 28, 4, 16),
                             data, 0, settings=settings, seed=0)
    acc_original = rows["original"]["acc_forget_test"]
    assert acc_original > 50.0  # a model that knows the class: the target is far from 0
    for name, row in rows.items():
        assert row["anamnesis_target"] == pytest.approx(0.9 * acc_original), name
    assert rows["original"]["relearn_steps"] == 0.0 and rows["original"]["relearn_reached"] == 1
    oracle_row = rows["oracle"]
    assert oracle_row["relearn_reached"] == 1.0 and oracle_row["relearn_steps"] > 0
    assert oracle_row["anamnesis_index"] == pytest.approx(1.0)
    # the fixed 20 % target is read off the same trajectory and is reached no later
    assert oracle_row["relearn_steps_fixed"] <= oracle_row["relearn_steps"]
    assert rows["original"]["anamnesis_index"] == 0.0


def test_relearn_counts_from_hand_made_trajectories():
    """Steps to the target and to the fixed threshold per model, their ratios to the oracle's,
    and the lower bound ``max_steps + 1`` when a model never gets there."""
    settings = E.EvalSettings(relearn_max_steps=4, relearn_threshold=50.0)
    traj = {"oracle": [0.0, 20.0, 55.0, 77.0],     # target 76: 3 steps; 50 %: 2
            "pbu": [0.0, 60.0, 78.0],              # 2 steps; 1
            "stuck": [0.0, 10.0, 20.0, 30.0, 40.0]}  # never: 5 = max_steps + 1
    counts = E._relearn_metrics({k: M.RelearnResult(len(v) - 1, True, v)
                                 for k, v in traj.items()}, 76.0, settings)
    assert (counts["oracle"]["relearn_steps"], counts["oracle"]["relearn_steps_fixed"]) == (3, 2)
    assert counts["pbu"]["anamnesis_index"] == pytest.approx(2 / 3)
    assert counts["pbu"]["relearn_ratio_fixed"] == pytest.approx(1 / 2)
    assert counts["stuck"]["relearn_steps"] == 5 and counts["stuck"]["relearn_reached"] == 0
    assert counts["stuck"]["anamnesis_index"] == pytest.approx(5 / 3)
    # an oracle that never relearns leaves every ratio undefined, not a made-up number
    no_oracle = E._relearn_metrics({"oracle": M.RelearnResult(5, False, traj["stuck"]),
                                    "pbu": M.RelearnResult(2, True, traj["pbu"])}, 76.0,
                                   settings)
    assert math.isnan(no_oracle["pbu"]["anamnesis_index"])
    assert math.isnan(no_oracle["pbu"]["relearn_ratio_fixed"])
