"""`evaluate_models` wired to the metrics: each number from the right split of the right model.

The models here are lookup tables: every image carries its own index in two pixels, and a model
returns the logits written for that index. So the logits of every model on every split are
hand-made, and each metric `evaluate_models` reports can be recomputed here by calling
`pbu.metrics` directly on the sets it is defined on.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from pbu import metrics as M
from pbu.data import DatasetSpec, TensorImages
from pbu.evaluate import SPLITS, EvalData, EvalSettings, evaluate_models

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
        len(labels), K, generator=g)


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
    tables = {"model": model, "oracle": 2 * torch.randn(n, K, generator=g),
              "incompetent": torch.randn(n, K, generator=g)}
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
    rows = evaluate_models({"model": Lookup(tables["model"])}, Lookup(tables["oracle"]),
                           Lookup(tables["incompetent"]), data, FORGET, settings=settings,
                           seed=SEED)
    out = {name: {s: _logits(tables[name], getattr(data, s)) for s in SPLITS}
           for name in ("model", "oracle", "incompetent")}
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
                f"{name}'s acc_{s} = {rows[name][f'acc_{s}']} is not its accuracy on {s} ({want})")
    assert rows["model"]["acc_forget_train"] == pytest.approx(75.0)  # the hand-made 3/4


def test_mia_entropy_svc_attacks_retain_train_vs_test_without_the_class_on_forget_train(
        evaluated):
    """Members = retain-train, non-members = test without the forget class, targets =
    forget-train; a swap of any two sets gives another number."""
    rows, out, settings = evaluated
    o = {s: out["model"][s][0] for s in SPLITS}

    def mia(members: str, nonmembers: str, targets: str) -> float:
        return M.mia_entropy_svc(o[members], o[nonmembers], o[targets], seed=SEED,
                                 max_samples=settings.mia_max_samples)

    got = rows["model"]["mia_entropy_svc"]
    want = mia("retain_train", "retain_test", "forget_train")
    assert got == pytest.approx(want), (
        f"evaluate's mia_entropy_svc = {got}, but the attack on members = retain-train, "
        f"non-members = retain-test, targets = forget-train gives {want}")
    assert want == pytest.approx(0.75, abs=0.05)  # the sure 3/4 of the forget set are caught
    for swapped, sets in {"members <-> non-members": ("retain_test", "retain_train",
                                                      "forget_train"),
                          "non-members <-> targets": ("retain_train", "forget_train",
                                                      "retain_test"),
                          "members <-> targets": ("forget_train", "retain_test",
                                                  "retain_train")}.items():
        other = mia(*sets)
        assert abs(other - want) > 0.2, f"swapping {swapped} barely changes the MIA: the check " \
                                        f"could not see that swap ({other} vs {want})"


def test_salun_and_loss_attacks_use_their_defined_sets(evaluated):
    rows, out, settings = evaluated
    m = out["model"]
    want = M.mia_efficacy_salun(*m["retain_train"], *m["retain_test"], *m["forget_train"],
                                seed=SEED, max_samples=settings.mia_max_samples)
    assert rows["model"]["mia_efficacy_salun"] == pytest.approx(want), (
        "mia_efficacy_salun is not the attack on (retain-train, retain-test, forget-train)")
    loss = M.mia_loss_lr(*m["forget_train"], *m["forget_test"], seed=SEED)
    assert rows["model"]["mia_loss_acc"] == pytest.approx(loss["acc"]), \
        "mia_loss_acc is not the attack forget-train vs forget-test"
    assert rows["model"]["mia_loss_auc"] == pytest.approx(loss["auc"]), \
        "mia_loss_auc is not the attack forget-train vs forget-test"


def test_distances_compare_each_test_split_with_the_oracle_and_zrf_with_the_incompetent(
        evaluated):
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
            f"outputs of that split is {want}")
    # The oracle is compared with itself: zero distance, and nothing here is trivially zero.
    for key in ("js_forget_test", "js_retain_test", "act_dist_forget_test",
                "act_dist_retain_test"):
        assert rows["oracle"][key] == pytest.approx(0.0, abs=1e-9), (key, rows["oracle"][key])
        assert rows["model"][key] > 0.05, (key, rows["model"][key])
    assert all(math.isfinite(v) for v in rows["model"].values())
