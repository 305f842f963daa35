"""PBU: the loss, the blind stopping rule, data access, and a real run on mnist5k."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from pbu import methods
from pbu.data import class_split
from pbu.methods.pbu import PBUConfig, pbu_loss_terms, unlearn_pbu

CFG = dict(
    alpha=631.0,
    beta=100.0,
    gamma=4001.0,
    lr=1e-3,
    batch_size=8,
    epochs=2,
    bn_mode="train",
    stop_rule="none",
    stop_threshold=5.0,
    check_every=1,
    check_samples=0,
    fisher_scale="none",
)


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 3)
    )


def test_loss_terms_match_an_independent_computation(tiny_data):
    model = _tiny_model()
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():  # move away from the anchor
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    x, y = next(iter(tiny_data.loader(8)))
    cfg = PBUConfig(**CFG)
    model.eval()
    t = pbu_loss_terms(model, x, y, anchor, fisher, cfg)
    ce = F.cross_entropy(model(x), y)
    flat = lambda d: torch.cat([d[n].flatten() for n, _ in model.named_parameters()])
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])
    d = theta - flat(anchor)
    assert t["term_forget"].item() == pytest.approx(-631.0 * ce.item(), rel=1e-6)
    assert t["term_fisher"].item() == pytest.approx(
        100.0 * (flat(fisher) * d * d).sum().item(), rel=1e-5
    )
    assert t["term_l2"].item() == pytest.approx(4001.0 * (d * d).sum().item(), rel=1e-5)


def test_first_step_gradient_is_pure_gradient_ascent(tiny_data):
    """At θ* the Fisher and l2 terms have zero gradient: the first update ascends the CE."""
    model = _tiny_model().eval()
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    x, y = next(iter(tiny_data.loader(8)))
    t = pbu_loss_terms(model, x, y, anchor, fisher, PBUConfig(**CFG))
    g = torch.autograd.grad(
        t["term_forget"] + t["term_fisher"] + t["term_l2"], list(model.parameters())
    )
    ce_g = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    for a, b in zip(g, ce_g):
        assert torch.allclose(a, -631.0 * b, rtol=1e-4, atol=1e-3)


def test_fixed_epochs_without_stop_rule(tiny_data):
    forget = tiny_data.subset(class_split(tiny_data.labels, 1)[0])  # 20 samples
    model = _tiny_model()
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    res = unlearn_pbu(model, forget.loader(8, shuffle=True), fisher, PBUConfig(**CFG))
    assert res.info["steps"] == 2 * 3 and res.info["epochs"] == pytest.approx(2.0)
    assert [r["step"] for r in res.history] == list(range(1, 7))
    # The caller's model is untouched (θ* stays available).
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), _tiny_model().state_dict().values())
    )


def test_pbu_declares_forget_only_and_gets_nothing_else(tiny_data):
    spec = methods.get_method("pbu")
    assert spec.access == methods.FORGET_ONLY and spec.needs_fisher
    fisher = {"w": torch.zeros(1)}
    inputs = methods.build_inputs(spec, tiny_data, 1, 3, retain_subset=10, seed=0, fisher=fisher)
    assert inputs.retain is None
    assert sorted(set(inputs.forget.labels.tolist())) == [1] and len(inputs.forget) == 20


@pytest.mark.parametrize("check_samples,expected", [(0, 20), (7, 7), (50, 20)])
def test_stop_rule_measures_a_fixed_sample_of_the_forget_set(tiny_data, check_samples, expected):
    """check_samples bounds the images each check evaluates; always the same images."""
    model = _tiny_model()
    spec = methods.get_method("pbu")
    fisher = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    inputs = methods.build_inputs(spec, tiny_data, 1, 3, retain_subset=0, seed=0, fisher=fisher)
    seen: list[torch.Tensor] = []
    model.register_forward_hook(
        lambda m, args, _out: None if m.training else seen.append(args[0].sum((1, 2, 3)))
    )
    hp = {
        **CFG,
        "stop_rule": "forget_ce",
        "stop_threshold": 1e9,
        "epochs": 1,
        "check_samples": check_samples,
    }
    result, _ = methods.run("pbu", model, inputs, hp, seed=0)
    checks = result.info["steps"]
    assert checks == 3  # 20 forget images, batch 8; a CE of 1e9 nats is never reached
    per_check = torch.cat(seen).reshape(checks, -1)  # one loader pass per check
    assert per_check.shape[1] == expected
    assert all(torch.equal(per_check[0], row) for row in per_check)  # a fixed sample


# ------------------------------------------------------------------------------------------
# The joint: the Fisher the caller gives is the Fisher the training loop uses
# ------------------------------------------------------------------------------------------


def _forget_of(tiny_data, c: int = 1):
    return tiny_data.subset(class_split(tiny_data.labels, c)[0])  # 20 samples


@pytest.mark.parametrize("fisher_scale", ["none", "unit_mean"])
def test_recorded_fisher_term_is_beta_sum_f_dtheta2_of_the_given_fisher(tiny_data, fisher_scale):
    """Each recorded ``term_fisher`` equals β·Σ F (θ − θ*)², recomputed here from the parameters
    it was computed at (the model the monitor saw after the previous step; the last one is the
    returned model) and the Fisher the caller passed in: as given with ``fisher_scale="none"``,
    divided by its mean over every parameter entry with ``"unit_mean"``."""
    forget = _forget_of(tiny_data)
    model = _tiny_model()
    theta_star = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    fisher = {n: torch.rand(p.shape, generator=g) * 50 for n, p in model.named_parameters()}
    given = {n: f.clone() for n, f in fisher.items()}
    original = list(given.values())
    if fisher_scale == "unit_mean":  # F / mean F, the mean over all entries, computed apart
        flat = torch.cat([f.double().flatten() for f in given.values()])
        assert flat.mean() > 20  # far from 1: a missing rescale would be seen
        given = {n: f.double() / flat.mean() for n, f in given.items()}
    seen: dict[int, dict[str, torch.Tensor]] = {}
    cfg = PBUConfig(**{**CFG, "beta": 7.0, "epochs": 2, "fisher_scale": fisher_scale})
    res = unlearn_pbu(
        model,
        forget.loader(8, shuffle=True, seed=0),
        fisher,
        cfg,
        monitor=lambda m, s: seen.update(
            {s: {n: p.detach().clone() for n, p in m.named_parameters()}}
        ),
    )
    assert all(torch.equal(fisher[n], f) for n, f in zip(fisher, original)), (
        "PBU modified the caller's Fisher"
    )
    last = res.info["steps"]
    returned = {n: p.detach() for n, p in res.model.named_parameters()}
    assert all(torch.equal(returned[n], seen[last][n]) for n in returned), (
        "the returned model is not the model after the last recorded step"
    )

    def expected(theta: dict[str, torch.Tensor]) -> float:
        return 7.0 * sum(
            float((given[n].double() * (theta[n].double() - theta_star[n].double()) ** 2).sum())
            for n in given
        )

    assert expected(returned) > 1e-3, "the model did not move away from θ*: the test is vacuous"
    assert len(res.history) == last
    for row in res.history[1:]:  # row of step s was computed at the parameters after step s-1
        want = expected(seen[int(row["step"]) - 1])
        assert row["term_fisher"] == pytest.approx(want, rel=1e-4), (
            f"step {int(row['step'])}: PBU recorded term_fisher = {row['term_fisher']:.6g}, but "
            f"β·ΣF(θ−θ*)² with the Fisher it was given is {want:.6g}: the training loop does not "
            f"use the caller's Fisher"
        )


def test_scale_fisher_unit_mean_divides_by_the_mean_over_every_entry():
    from pbu.methods.pbu import scale_fisher

    fisher = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([[2.0, 6.0, 8.0]])}  # mean 4
    out = scale_fisher(fisher, "unit_mean")
    assert torch.equal(out["a"], torch.tensor([0.25, 0.75]))
    assert torch.equal(out["b"], torch.tensor([[0.5, 1.5, 2.0]]))
    assert torch.equal(fisher["a"], torch.tensor([1.0, 3.0]))  # the caller's tensors untouched
    same = scale_fisher(fisher, "none")
    assert all(same[n] is fisher[n] for n in fisher)
    with pytest.raises(ValueError, match="cannot be rescaled to unit mean"):
        scale_fisher({"a": torch.zeros(3)}, "unit_mean")
    with pytest.raises(ValueError, match="pbu.fisher_scale must be one of"):
        PBUConfig(**{**CFG, "fisher_scale": "unit_max"})


def _displacement(model: nn.Module, theta_star: dict[str, torch.Tensor], names: list[str]) -> float:
    return sum(
        float((p.detach() - theta_star[n]).abs().sum())
        for n, p in model.named_parameters()
        if n in names
    )


def test_with_gamma_zero_parameters_with_large_fisher_move_less(tiny_data):
    """γ = 0, same data, seed and θ*: the parameters whose Fisher is large stay much closer to θ*
    than in the run with F = 0 (the Fisher term is what holds them), while the others move."""
    forget = _forget_of(tiny_data)
    model = _tiny_model()
    theta_star = {n: p.detach().clone() for n, p in model.named_parameters()}
    held = ["0.weight", "4.weight"]  # the first convolution's and the classifier's weights
    free = [n for n in theta_star if n not in held]
    cfg = PBUConfig(**{**CFG, "alpha": 1.0, "beta": 1.0, "gamma": 0.0, "epochs": 4})
    moved = {}
    for label, big in (("F = 0", 0.0), ("large F", 1e4)):
        fisher = {
            n: torch.full_like(p, big if n in held else 0.0) for n, p in model.named_parameters()
        }
        res = unlearn_pbu(model, forget.loader(8, shuffle=True, seed=0), fisher, cfg)
        moved[label] = (
            _displacement(res.model, theta_star, held),
            _displacement(res.model, theta_star, free),
        )
    (held_f0, free_f0), (held_big, free_big) = moved["F = 0"], moved["large F"]
    assert held_f0 > 0 and free_f0 > 0 and free_big > 0, moved
    assert held_big < 0.3 * held_f0, (
        f"with γ = 0, parameters with F = 1e4 moved {held_big:.4g} (sum |θ−θ*|) against "
        f"{held_f0:.4g} with F = 0: the Fisher term does not hold them near θ*"
    )


@pytest.mark.parametrize("threshold,stops", [(100.0, True), (-1.0, False)])
def test_forget_acc_rule_stops_at_the_first_check_at_or_below_the_threshold(
    tiny_data, threshold, stops
):
    """Every accuracy is <= 100 %: the rule ends the run at its first check (step 1); none is
    <= -1 %: the run goes to its last epoch."""
    forget = _forget_of(tiny_data)
    cfg = PBUConfig(**{**CFG, "stop_rule": "forget_acc", "stop_threshold": threshold})
    res = unlearn_pbu(
        _tiny_model(),
        forget.loader(8, shuffle=True, seed=0),
        {n: torch.ones_like(p) for n, p in _tiny_model().named_parameters()},
        cfg,
    )
    accs = [r["acc_forget_train"] for r in res.history]
    if stops:
        assert res.info["stop_step"] == res.info["steps"] == 1, (
            f"threshold 100 %: the forget_acc rule did not stop at the first check "
            f"(stopped at {res.info['stop_step']} of {res.info['steps']} steps, accuracies {accs})"
        )
    else:
        assert res.info["stop_step"] is None and res.info["steps"] == 2 * 3, (
            f"threshold -1 %: the forget_acc rule stopped at step {res.info['stop_step']} although "
            f"no accuracy can be that low"
        )
        assert len(accs) == 6, "the rule was not checked after every step"


@pytest.fixture(scope="module")
def pbu_on_mnist5k(mnist5k, pretrained_small_cnn):
    from pbu.fisher import fisher_diagonal
    from pbu.train import evaluate_accuracy

    train, test = mnist5k
    model, _ = pretrained_small_cnn
    c = 2
    forget = train.subset(class_split(train.labels, c)[0])
    ft = test.subset(class_split(test.labels, c)[0]).loader(1000)
    rt = test.subset(class_split(test.labels, c)[1]).loader(1000)
    fisher = fisher_diagonal(model, forget.loader(256), kind="true")
    # the default config's values (the authors' lr 1e-4, the epoch cap of their step budget), the
    # stop rule measuring the whole forget set
    hp = yaml.safe_load(
        (Path(__file__).resolve().parents[3] / "config" / "config.yaml").read_text()
    )
    cfg = PBUConfig(**{**hp["hparams"]["pbu"], "check_samples": 0})
    before = (evaluate_accuracy(model, ft), evaluate_accuracy(model, rt))
    res = unlearn_pbu(
        model,
        forget.loader(64, shuffle=True, seed=0),
        fisher,
        cfg,
        check_loader=forget.loader(1000),
    )
    after = (evaluate_accuracy(res.model, ft), evaluate_accuracy(res.model, rt))
    return res, before, after, forget


def test_pbu_forgets_class_and_keeps_the_rest(pbu_on_mnist5k):
    res, before, after, _ = pbu_on_mnist5k
    assert before[0] > 90
    assert after[0] <= 5.0, after
    # measured: retained accuracy 97.4 -> 91.6 in 48 steps (5.8 points; 93.2 at lr 1e-3, the old
    # default); a collapse of the kind the authors' fixed 5 epochs show would fall far below
    assert after[1] >= before[1] - 8.0, (before, after)
    # the blind rule, not the epoch cap, ended the run (7 batches per epoch here)
    assert res.info["stop_step"] is not None and res.info["steps"] < 7 * 68


def test_stop_rule_fires_at_the_first_step_below_threshold(pbu_on_mnist5k):
    res, _, _, forget = pbu_on_mnist5k
    stop = res.info["stop_step"]
    assert stop is not None and res.info["steps"] == stop
    accs = [r["acc_forget_train"] for r in res.history]
    assert accs[-1] <= 5.0 and all(a > 5.0 for a in accs[:-1])
    # The recorded accuracy is the accuracy of the returned model on the forget TRAIN set.
    from pbu.train import evaluate_accuracy

    assert evaluate_accuracy(res.model, forget.loader(1000)) == pytest.approx(accs[-1])
    assert [r["stopped"] for r in res.history].count(1.0) == 1
