"""`evaluate_models` wired to the metrics: each number from the right split of the right model.

The models here are lookup tables: every image carries its own index in two pixels, and a model
returns the logits written for that index. So the logits of every model on every split are
hand-made, and each metric `evaluate_models` reports can be recomputed here by calling
`pbu.metrics` directly on the sets it is defined on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from pbu import evaluation as E
from pbu import metrics as M
from pbu.data import DatasetSpec, TensorImages
from pbu.evaluation import SPLITS, EvalData, EvalSettings, evaluate_models

K = 3
FORGET = 1
SEED = 0
MEAN, STD = 0.5, 0.25
SPEC = DatasetSpec("lookup", K, 1, 2, (MEAN,), (STD,), "none", "tensor", "test fixture")
# samples per split: forget-train, retain-train, forget-test, retain-test
SIZES = {"forget_train": 40, "retain_train": 80, "forget_test": 30, "retain_test": 60}


class Lookup(nn.Module):
    """Returns ``table[i]`` for the image that carries index ``i`` (pixels 0 and 1, base 256)."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.float())

    def forward(self, x: Tensor) -> Tensor:
        pix = (x[:, 0, 0, :2] * (STD * 255) + MEAN * 255).round().long()
        return self.table[pix[:, 0] * 256 + pix[:, 1]]


def _images(ids: Tensor) -> Tensor:
    img = torch.zeros(len(ids), 1, 2, 2, dtype=torch.uint8)
    img[:, 0, 0, 0], img[:, 0, 0, 1] = ids // 256, ids % 256
    return img


def _confident(labels: Tensor, g: torch.Generator, scale: float = 8.0) -> Tensor:
    """Logits that put almost all mass on ``labels`` (low entropy, high true-class confidence)."""
    return scale * nn.functional.one_hot(labels, K).float() + 0.3 * torch.randn(
        len(labels), K, generator=g
    )


def _vague(n: int, g: torch.Generator) -> Tensor:
    """Near-uniform logits (high entropy)."""
    return 0.3 * torch.randn(n, K, generator=g)


@pytest.fixture(scope="module")
def world():
    """Train/test splits of K classes, interleaved, and the logits of three models on them."""
    g = torch.Generator().manual_seed(0)
    labels = {
        "forget_train": torch.full((SIZES["forget_train"],), FORGET),
        "retain_train": torch.tensor([0, 2]).repeat(SIZES["retain_train"] // 2),
        "forget_test": torch.full((SIZES["forget_test"],), FORGET),
        "retain_test": torch.tensor([0, 2]).repeat(SIZES["retain_test"] // 2),
    }
    start, ids = 0, {}
    for s in SPLITS:
        ids[s] = torch.arange(start, start + SIZES[s])
        start += SIZES[s]

    def split_data(forget: str, retain: str) -> TensorImages:
        i = torch.cat([ids[forget], ids[retain]])
        y = torch.cat([labels[forget], labels[retain]])
        order = torch.randperm(len(i), generator=g)  # classes interleaved, not in blocks
        return TensorImages(SPEC, _images(i[order]), y[order])

    train = split_data("forget_train", "retain_train")
    test = split_data("forget_test", "retain_test")
    n = start
    # The unlearned model: sure of the retained training images, vague on the test images, and
    # still sure of 3/4 of the forget class's training images (which the MIA should catch).
    model = torch.zeros(n, K)
    model[ids["retain_train"]] = _confident(labels["retain_train"], g)
    model[ids["retain_test"]] = _vague(SIZES["retain_test"], g)
    sure = SIZES["forget_train"] * 3 // 4
    model[ids["forget_train"][:sure]] = _confident(labels["forget_train"][:sure], g)
    vague = _vague(SIZES["forget_train"] - sure, g)
    vague[:, FORGET] -= 1.0  # still near-uniform, but never right
    model[ids["forget_train"][sure:]] = vague
    model[ids["forget_test"]] = _confident(torch.full((SIZES["forget_test"],), 2), g, 3.0)
    tables = {
        "model": model,
        "oracle": 2 * torch.randn(n, K, generator=g),
        "incompetent": torch.randn(n, K, generator=g),
    }
    return train, test, tables


def _logits(table: Tensor, data: TensorImages) -> tuple[Tensor, Tensor]:
    """What a model must output on ``data``: read back from the table by each image's index."""
    ids = data.images[:, 0, 0, 0].long() * 256 + data.images[:, 0, 0, 1].long()
    return table[ids].double(), data.labels


@pytest.fixture(scope="module")
def evaluated(world):
    train, test, tables = world
    data = EvalData.build(train, test, FORGET)
    settings = EvalSettings(probe=False, relearn=False, mia_max_samples=1000)
    rows = evaluate_models(
        {"model": Lookup(tables["model"])},
        Lookup(tables["oracle"]),
        Lookup(tables["incompetent"]),
        data,
        FORGET,
        settings=settings,
        seed=SEED,
    )
    out = {
        name: {s: _logits(tables[name], getattr(data, s)) for s in SPLITS}
        for name in ("model", "oracle", "incompetent")
    }
    return rows, out, settings


def test_splits_hold_what_their_names_say(world):
    train, test, _ = world
    data = EvalData.build(train, test, FORGET)
    for s in SPLITS:
        d = getattr(data, s)
        assert len(d) == SIZES[s], (s, len(d))
        is_forget = set(d.labels.tolist()) == {FORGET}
        assert is_forget == s.startswith("forget"), f"{s} holds classes {set(d.labels.tolist())}"


def test_accuracies_are_of_each_split(evaluated):
    rows, out, _ = evaluated
    for name in ("model", "oracle"):
        for s in SPLITS:
            want = M.accuracy_from_logits(*out[name][s])
            assert rows[name][f"acc_{s}"] == pytest.approx(want), (
                f"{name}'s acc_{s} = {rows[name][f'acc_{s}']} is not its accuracy on {s} ({want})"
            )
    assert rows["model"]["acc_forget_train"] == pytest.approx(75.0)  # the hand-made 3/4


def test_mia_entropy_svc_attacks_retain_train_vs_test_without_the_class_on_forget_train(evaluated):
    """Members = retain-train, non-members = test without the forget class, targets =
    forget-train; a swap of any two sets gives another number."""
    rows, out, settings = evaluated
    o = {s: out["model"][s][0] for s in SPLITS}

    def mia(members: str, nonmembers: str, targets: str) -> float:
        return M.entropy_svc_attack(
            o[members],
            o[nonmembers],
            o[targets],
            seed=SEED,
            max_samples=settings.mia_max_samples,
            valid_fraction=settings.mia_valid_fraction,
        ).value

    got = rows["model"]["mia_entropy_svc"]
    want = mia("retain_train", "retain_test", "forget_train")
    assert got == pytest.approx(want), (
        f"evaluate's mia_entropy_svc = {got}, but the attack on members = retain-train, "
        f"non-members = retain-test, targets = forget-train gives {want}"
    )
    assert want == pytest.approx(0.75, abs=0.05)  # the sure 3/4 of the forget set are caught
    for swapped, sets in {
        "members <-> non-members": ("retain_test", "retain_train", "forget_train"),
        "non-members <-> targets": ("retain_train", "forget_train", "retain_test"),
        "members <-> targets": ("forget_train", "retain_test", "retain_train"),
    }.items():
        other = mia(*sets)
        assert abs(other - want) > 0.2, (
            f"swapping {swapped} barely changes the MIA: the check "
            f"could not see that swap ({other} vs {want})"
        )


def test_salun_and_loss_attacks_use_their_defined_sets(evaluated):
    rows, out, settings = evaluated
    m = out["model"]
    want = M.efficacy_salun_attack(
        *m["retain_train"],
        *m["retain_test"],
        *m["forget_train"],
        seed=SEED,
        max_samples=settings.mia_max_samples,
        valid_fraction=settings.mia_valid_fraction,
    ).value
    assert rows["model"]["mia_efficacy_salun"] == pytest.approx(want), (
        "mia_efficacy_salun is not the attack on (retain-train, retain-test, forget-train)"
    )
    loss = M.mia_loss_lr(*m["forget_train"], *m["forget_test"], seed=SEED)
    assert rows["model"]["mia_loss_acc"] == pytest.approx(loss["acc"]), (
        "mia_loss_acc is not the attack forget-train vs forget-test"
    )
    assert rows["model"]["mia_loss_auc"] == pytest.approx(loss["auc"]), (
        "mia_loss_auc is not the attack forget-train vs forget-test"
    )


def test_each_attack_reports_the_validity_of_the_attack_it_ran(evaluated, world):
    """Beside each MIA value, the held-out balanced accuracy, its standard error and the AUC of
    the same fitted attack (same sets, same split); the loss attack's on the retained classes'
    train vs test."""
    rows, out, settings = evaluated
    m = out["model"]
    kw = {
        "seed": SEED,
        "max_samples": settings.mia_max_samples,
        "valid_fraction": settings.mia_valid_fraction,
    }
    rtr, rte = m["retain_train"][0], m["retain_test"][0]
    ftr, fte = m["forget_train"][0], m["forget_test"][0]
    attacks = {
        "mia_entropy_svc": M.entropy_svc_attack(rtr, rte, ftr, **kw),
        "mia_entropy_svc_bad_teaching": M.entropy_svc_bad_teaching_attack(rtr, rte, fte, ftr, **kw),
        "mia_efficacy_salun": M.efficacy_salun_attack(
            *m["retain_train"], *m["retain_test"], *m["forget_train"], **kw
        ),
    }
    loss = M.loss_attack_validity(*m["retain_train"], *m["retain_test"], seed=SEED)
    for name, v in [*((k, a.validity) for k, a in attacks.items()), ("mia_loss", loss)]:
        got = [rows["model"][f"{name}_valid_{k}"] for k in ("bacc", "bacc_se", "auc")]
        assert got == pytest.approx([v.bacc, v.bacc_se, v.auc]), name
        assert name + "_valid_bacc" in E.UNITS
    train, test, tables = world
    no_validity = evaluate_models(
        {"model": Lookup(tables["model"])},
        Lookup(tables["oracle"]),
        Lookup(tables["incompetent"]),
        EvalData.build(train, test, FORGET),
        FORGET,
        settings=EvalSettings(probe=False, relearn=False, mia_valid_fraction=None),
        seed=SEED,
    )["model"]
    assert not any("_valid_" in k for k in no_validity)
    assert no_validity["mia_entropy_svc"] == M.mia_entropy_svc(rtr, rte, ftr, seed=SEED)


def test_the_per_example_confidences_are_each_models_on_the_forget_train_images(world):
    """``per_example``: every model's logit-scaled confidence of the true class on each
    forget-train image, in the split's order (what the forget score compares across seeds)."""
    train, test, tables = world
    data = EvalData.build(train, test, FORGET)
    per_example: dict[str, np.ndarray] = {}
    evaluate_models(
        {"model": Lookup(tables["model"])},
        Lookup(tables["oracle"]),
        Lookup(tables["incompetent"]),
        data,
        FORGET,
        settings=EvalSettings(probe=False, relearn=False),
        seed=SEED,
        per_example=per_example,
    )
    assert set(per_example) == {"model", "oracle"}
    for name in per_example:
        want = M.logit_confidence(*_logits(tables[name], data.forget_train))
        np.testing.assert_allclose(per_example[name], want, rtol=1e-6)
        other = M.logit_confidence(*_logits(tables[name], data.forget_test))
        assert len(other) != len(want) or not np.allclose(other, want)


def test_distances_compare_each_test_split_with_the_oracle_and_zrf_with_the_incompetent(evaluated):
    rows, out, _ = evaluated
    m, o, inc = out["model"], out["oracle"], out["incompetent"]
    checks = {
        "js_forget_test": M.js_divergence(m["forget_test"][0], o["forget_test"][0]),
        "js_retain_test": M.js_divergence(m["retain_test"][0], o["retain_test"][0]),
        "act_dist_forget_test": M.activation_distance(m["forget_test"][0], o["forget_test"][0]),
        "act_dist_retain_test": M.activation_distance(m["retain_test"][0], o["retain_test"][0]),
        "zrf_forget_test": M.zrf(m["forget_test"][0], inc["forget_test"][0]),
        "zrf_forget_test_as_coded": M.zrf_as_coded(m["forget_test"][0], inc["forget_test"][0]),
    }
    for key, want in checks.items():
        assert rows["model"][key] == pytest.approx(want), (
            f"{key} = {rows['model'][key]} but the metric on the model's and the reference's "
            f"outputs of that split is {want}"
        )
    # The oracle is compared with itself: zero distance, and nothing here is trivially zero.
    for key in ("js_forget_test", "js_retain_test", "act_dist_forget_test", "act_dist_retain_test"):
        assert rows["oracle"][key] == pytest.approx(0.0, abs=1e-9), (key, rows["oracle"][key])
        assert rows["model"][key] > 0.05, (key, rows["model"][key])
    assert all(math.isfinite(v) for v in rows["model"].values())


# ------------------------------------------------------------------------------------------
# pbu.evaluation.evaluate_models as a joint: which sets reach each MIA, and which model's accuracy
# sets the Anamnesis target. Hand-made logits per split (issue 13, items 2 and 3).
# ------------------------------------------------------------------------------------------


K_MIA = 10
NO_DEPTH = E.EvalSettings(batch_size=64, mia_max_samples=None, relearn=False, probe=False)


class Scripted(nn.Module):
    """A stand-in model whose outputs per split are given by hand (see ``scripted``)."""

    def __init__(self, outputs: dict[str, torch.Tensor]):
        super().__init__()
        self.outputs = outputs
        self.lin = nn.Linear(1, 1)


def _peaked(n: int, rng: np.random.Generator, height: float) -> torch.Tensor:
    logits = 0.05 * rng.standard_normal((n, K_MIA))
    logits[:, 0] += height
    return torch.tensor(logits)


def _confident_rows(n: int, rng: np.random.Generator) -> torch.Tensor:
    logits = 0.1 * rng.standard_normal((n, K_MIA))
    logits[np.arange(n), rng.integers(1, K_MIA, n)] += 20.0  # entropy ~0
    return torch.tensor(logits)


def _flat(n: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.tensor(0.1 * rng.standard_normal((n, K_MIA)))  # entropy ~ln 10


@pytest.fixture
def eval_data(square_images):
    train, test = square_images(K_MIA, 10, seed=0), square_images(K_MIA, 30, seed=1)
    return E.EvalData.build(train, test, forget_class=0)


def scripted(monkeypatch, data: E.EvalData, logits: dict[str, torch.Tensor]) -> Scripted:
    """A model whose outputs on ``data``'s splits are ``logits`` (labels from the data)."""
    model = Scripted({s: (logits[s], getattr(data, s).labels.clone(), None) for s in E.SPLITS})
    monkeypatch.setattr(E, "model_outputs", lambda m, *_a, **_k: m.outputs)
    return model


def _rows(monkeypatch, data, logits):
    model = scripted(monkeypatch, data, logits)
    torch.manual_seed(0)
    incompetent = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, K_MIA))
    return E.evaluate_models({"m": model}, model, incompetent, data, 0, settings=NO_DEPTH, seed=0)[
        "m"
    ]


def test_each_mia_gets_its_sets_in_their_roles(monkeypatch, eval_data):
    """Members retain-train (entropy ~0), non-members retain-test (~ln 10); the forget class,
    train and test, at ~0.34: ours calls forget-train "member", Bad Teaching's sets (whole test
    split, so forget-test among the non-members) do not."""
    rng = np.random.default_rng(0)
    n = {s: len(getattr(eval_data, s)) for s in E.SPLITS}
    logits = {
        "retain_train": _confident_rows(n["retain_train"], rng),
        "retain_test": _flat(n["retain_test"], rng),
        "forget_train": _peaked(n["forget_train"], rng, 5.0),
        "forget_test": _peaked(n["forget_test"], rng, 5.0),
    }
    row = _rows(monkeypatch, eval_data, logits)
    rtr, rte, ftr, fte = (
        logits[s] for s in ("retain_train", "retain_test", "forget_train", "forget_test")
    )
    ours = M.entropy_svc_attack(rtr, rte, ftr, seed=0, valid_fraction=0.25)
    theirs = M.entropy_svc_attack(rtr, torch.cat([rte, fte]), ftr, seed=0, valid_fraction=0.25)
    assert row["mia_entropy_svc"] == ours.value
    assert row["mia_entropy_svc_bad_teaching"] == theirs.value
    assert row["mia_entropy_svc_valid_bacc"] == ours.validity.bacc
    assert row["mia_entropy_svc_bad_teaching_valid_bacc"] == theirs.validity.bacc
    # the case tells the wirings apart: each wrong one gives another number
    assert (row["mia_entropy_svc"], row["mia_entropy_svc_bad_teaching"]) == (1.0, 0.0)
    assert M.mia_entropy_svc(rte, rtr, ftr, seed=0) == 0.0  # members <-> non-members


def test_the_forget_train_samples_are_the_targets(monkeypatch, eval_data):
    """Forget-train like the non-members, forget-test like the members: the fraction called
    member is 0 only if the attack is applied to forget-TRAIN."""
    rng = np.random.default_rng(1)
    n = {s: len(getattr(eval_data, s)) for s in E.SPLITS}
    logits = {
        "retain_train": _confident_rows(n["retain_train"], rng),
        "retain_test": _flat(n["retain_test"], rng),
        "forget_train": _flat(n["forget_train"], rng),
        "forget_test": _confident_rows(n["forget_test"], rng),
    }
    row = _rows(monkeypatch, eval_data, logits)
    assert row["mia_entropy_svc"] == 0.0
    # each attack's validity is its own: Bad Teaching's non-members include the forget-test
    # images, as confident as the members, so it cannot tell its held-out sides apart as well
    assert row["mia_entropy_svc_valid_bacc"] == 1.0
    assert row["mia_entropy_svc_bad_teaching_valid_bacc"] < 0.97
    assert (
        M.mia_entropy_svc(
            logits["retain_train"], logits["retain_test"], logits["forget_test"], seed=0
        )
        == 1.0
    )


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
    settings = E.EvalSettings(
        batch_size=64,
        relearn_samples=16,
        relearn_batch_size=8,
        relearn_lr=1e-2,
        relearn_max_steps=60,
        anamnesis_alpha=10.0,
        relearn_threshold=20.0,
        probe=False,
    )
    rows = E.evaluate_models(
        {"original": original},
        oracle,
        SmallCNN(num_classes, 1, 28, 4, 16),
        data,
        0,
        settings=settings,
        seed=0,
    )
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
    traj = {
        "oracle": [0.0, 20.0, 55.0, 77.0],  # target 76: 3 steps; 50 %: 2
        "pbu": [0.0, 60.0, 78.0],  # 2 steps; 1
        "stuck": [0.0, 10.0, 20.0, 30.0, 40.0],
    }  # never: 5 = max_steps + 1
    counts = E._relearn_metrics(
        {k: M.RelearnResult(len(v) - 1, True, v) for k, v in traj.items()}, 76.0, settings
    )
    assert (counts["oracle"]["relearn_steps"], counts["oracle"]["relearn_steps_fixed"]) == (3, 2)
    assert counts["pbu"]["anamnesis_index"] == pytest.approx(2 / 3)
    assert counts["pbu"]["relearn_ratio_fixed"] == pytest.approx(1 / 2)
    assert counts["stuck"]["relearn_steps"] == 5 and counts["stuck"]["relearn_reached"] == 0
    assert counts["stuck"]["anamnesis_index"] == pytest.approx(5 / 3)
    # an oracle that never relearns leaves every ratio undefined, not a made-up number
    no_oracle = E._relearn_metrics(
        {
            "oracle": M.RelearnResult(5, False, traj["stuck"]),
            "pbu": M.RelearnResult(2, True, traj["pbu"]),
        },
        76.0,
        settings,
    )
    assert math.isnan(no_oracle["pbu"]["anamnesis_index"])
    assert math.isnan(no_oracle["pbu"]["relearn_ratio_fixed"])
