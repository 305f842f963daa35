"""The baseline methods: enforced data access, each method's defining behaviour, hparam checks.

Everything runs on a tiny synthetic dataset (4 classes, a bright square at a class-specific
place on noise) and a narrow SmallCNN trained on it in about a second, so every method's real
code path runs in well under a second.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from pbu import methods
from pbu.data import TensorImages, class_split
from pbu.methods import REGISTRY, build_inputs, check_hparams

K = 4  # classes
FORGET = 1
N_PER_CLASS = 30
RETAIN_SUBSET = 20
CONFIG = yaml.safe_load((Path(__file__).parents[3] / "config" / "config.yaml").read_text())[
    "hparams"
]


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def square_data(square_images) -> TensorImages:
    return square_images(K, N_PER_CLASS)


@pytest.fixture(scope="module")
def trained(square_data, square_cnn) -> nn.Module:
    """A narrow SmallCNN (BatchNorm included) that classifies the squares perfectly."""
    return square_cnn(square_data, K)


@pytest.fixture
def model(trained) -> nn.Module:
    """A fresh copy of the trained model for one test."""
    return copy.deepcopy(trained)


def _zero_fisher(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(p) for n, p in model.named_parameters()}


def _inputs(name: str, data: TensorImages, model: nn.Module) -> methods.UnlearnInputs:
    spec = methods.get_method(name)
    return build_inputs(
        spec,
        data,
        FORGET,
        K,
        retain_subset=RETAIN_SUBSET,
        seed=0,
        fisher=_zero_fisher(model) if spec.needs_fisher else None,
    )


def _hp(name: str, **override) -> dict:
    hp = dict(CONFIG[name])
    hp.update(override)
    return hp


def _ce(model: nn.Module, data: TensorImages) -> float:
    model.eval()
    with torch.no_grad():
        x, y = next(iter(data.loader(len(data))))
        return F.cross_entropy(model(x), y).item()


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(im.flatten().tolist()) for im in images}


def test_trained_fixture_classifies_every_class(trained, square_data):
    x, y = next(iter(square_data.loader(len(square_data))))
    with torch.no_grad():
        assert (trained(x).argmax(1) == y).float().mean() == 1.0


# ------------------------------------------------------------------------------------------
# 1. Access enforcement
# ------------------------------------------------------------------------------------------

ALL = methods.available()


def test_every_listed_module_registers_a_method():
    expected = {
        "pbu",
        "finetune",
        "neggrad",
        "neggrad_plus",
        "random_labels",
        "unsir",
        "bad_teaching",
        "ssd",
        "scrub",
        "salun",
        "boundary_shrink",
    }
    assert expected <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_inputs_hold_exactly_the_declared_data_as_copies(name, square_data, trained):
    spec = methods.get_method(name)
    inputs = _inputs(name, square_data, trained)
    labels, images = square_data.labels, square_data.images
    is_forget = labels == FORGET
    assert inputs.forget_class == FORGET and inputs.num_classes == K

    if spec.access.forget:
        f = inputs.forget
        assert f is not None and set(f.labels.tolist()) == {FORGET}
        assert len(f) == int(is_forget.sum())
        assert _rows(f.images) == _rows(images[is_forget])  # all of it, nothing else
    else:
        assert inputs.forget is None

    r = inputs.retain
    if spec.access.retain == "none":
        assert r is None
    else:
        assert r is not None and FORGET not in r.labels.tolist()
        pool = _rows(images[~is_forget])
        if spec.access.retain == "all":
            assert len(r) == int((~is_forget).sum()) and _rows(r.images) == pool
        else:
            assert spec.access.retain == "subset"
            assert len(r) == RETAIN_SUBSET and _rows(r.images) <= pool
            assert len(_rows(r.images)) == RETAIN_SUBSET  # k distinct samples

    assert (inputs.fisher is not None) == spec.needs_fisher
    # Copies: no shared storage with the full training set, so it is unreachable from them.
    full = {
        square_data.images.untyped_storage().data_ptr(),
        square_data.labels.untyped_storage().data_ptr(),
    }
    for d in (inputs.forget, inputs.retain):
        if d is not None:
            assert d.images.untyped_storage().data_ptr() not in full
            assert d.labels.untyped_storage().data_ptr() not in full


# What each method's paper says it uses, written out here on purpose: the declaration in the
# method's module is what is being checked, so it must not be the source of the expectation.
# name: (forget samples?, retained samples "none" | "subset" | "all", forget-set Fisher?,
#        docs/methods.md's "data needed" wording)
PAPER_ACCESS = {
    # Panda et al., AAAI 2025: θ*, the forget class's training samples and their Fisher only
    "pbu": (True, "none", True, "forget"),
    "finetune": (False, "all", False, "all retain"),  # fine-tuning on the retained data
    "neggrad": (True, "none", False, "forget"),  # gradient ascent on the forget set
    "neggrad_plus": (True, "subset", False, "forget + retain subset"),  # Kurmanji et al. 2023
    "random_labels": (True, "none", False, "forget"),  # relabel the forget class
    "unsir": (False, "subset", False, "class id + retain subset"),  # Tarun et al., TNNLS 2023
    "bad_teaching": (True, "subset", False, "forget + retain subset"),  # Chundawat et al. 2023
    "ssd": (True, "all", False, "forget + all retain"),  # Foster et al. 2024: full train set
    "scrub": (True, "subset", False, "forget + retain subset"),  # Kurmanji et al. 2023
    "salun": (True, "subset", False, "forget + retain subset"),  # Fan et al., ICLR 2024
    "boundary_shrink": (True, "none", False, "forget"),  # Chen et al., CVPR 2023
}


def test_paper_access_table_covers_every_method():
    assert set(PAPER_ACCESS) == set(ALL), (
        f"methods without a paper access entry: {sorted(set(ALL) ^ set(PAPER_ACCESS))}"
    )


@pytest.mark.parametrize("name", ALL)
def test_each_method_gets_the_data_its_paper_uses_and_no_more(name, square_data, trained):
    """The harness hands each method what its PAPER uses (the literal table above), checked on
    the inputs actually built, not on the method's own declaration."""
    forget, retain, fisher, _ = PAPER_ACCESS[name]
    spec = methods.get_method(name)
    inputs = _inputs(name, square_data, trained)
    got_retain = (
        "none"
        if inputs.retain is None
        else "all"
        if len(inputs.retain) == (K - 1) * N_PER_CLASS
        else "subset"
        if len(inputs.retain) == RETAIN_SUBSET
        else f"{len(inputs.retain)}"
    )
    got = (inputs.forget is not None, got_retain, inputs.fisher is not None)
    assert got == (forget, retain, fisher), (
        f"{name} receives (forget={got[0]}, retain={got[1]}, fisher={got[2]}) but its paper "
        f"uses (forget={forget}, retain={retain}, fisher={fisher}); declared access: "
        f"{spec.access.label!r}"
    )


def test_readme_access_table_states_the_paper_access():
    """docs/methods.md's "Methods and the data they may see" table says the same as the literal
    table."""
    readme = (Path(__file__).parents[3] / "docs" / "methods.md").read_text()
    section = readme.split("## Methods and the data they may see", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", section, re.M))
    assert set(rows) == set(PAPER_ACCESS), sorted(set(rows) ^ set(PAPER_ACCESS))
    for name, (*_, want) in PAPER_ACCESS.items():
        assert rows[name] == want or rows[name].startswith(want + " ("), (
            f"docs/methods.md says {name} needs {rows[name]!r}; its paper uses {want!r}"
        )


class _RecordingLoader:
    """Wraps a loader; records the labels of every batch it yields."""

    def __init__(self, inner, seen: list[torch.Tensor]) -> None:
        self.inner, self.seen = inner, seen

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __iter__(self):
        for x, y in self.inner:
            self.seen.append(y.clone())
            yield x, y


@pytest.fixture
def spy_loaders(monkeypatch):
    """Record which ImageData objects a run builds loaders from, and every label it sees."""
    sources: list[object] = []
    labels: list[torch.Tensor] = []
    original = TensorImages.loader

    def loader(self, *args, **kwargs):
        sources.append(self)
        return _RecordingLoader(original(self, *args, **kwargs), labels)

    monkeypatch.setattr(TensorImages, "loader", loader)
    return sources, labels


@pytest.mark.parametrize("name", ALL)
def test_run_passes_only_the_inputs_and_the_method_reads_only_them(
    name, square_data, trained, spy_loaders, monkeypatch
):
    spec = methods.get_method(name)
    inputs = _inputs(name, square_data, trained)
    got: dict = {}

    def spy(model, inp, hp, **kwargs):
        got.update(model=model, inputs=inp, hp=hp, kwargs=kwargs)
        return spec.fn(model, inp, hp, **kwargs)

    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(spec, fn=spy))
    steps_seen: list[int] = []
    result, seconds = methods.run(
        name,
        copy.deepcopy(trained),
        inputs,
        _hp(name),
        seed=0,
        monitor=lambda m, s: steps_seen.append(s),
    )
    # The method got the harness's inputs object itself and nothing besides the model and hp.
    assert got["inputs"] is inputs and got["hp"] == CONFIG[name]
    assert set(got["kwargs"]) == {"device", "seed", "monitor"}
    sources, _ = spy_loaders
    given = [d for d in (inputs.forget, inputs.retain) if d is not None]
    assert sources and all(any(s is d for d in given) for s in sources)
    # What the harness records: steps, epochs, monitor calls at 0..steps, per-step history.
    info = result.info
    assert info["steps"] >= 1 and info["epochs"] > 0 and seconds >= 0
    assert steps_seen == list(range(info["steps"] + 1))
    assert [r["step"] for r in result.history] == list(range(1, info["steps"] + 1))
    assert all("epoch" in r for r in result.history)
    assert not result.model.training


@pytest.mark.parametrize("name", ["pbu", "neggrad", "scrub"])
def test_time_spent_in_the_monitor_is_not_the_methods_time(name, square_data, trained):
    """A monitor that sleeps 10 ms per call: the method's measured time excludes every sleep.

    No time is asserted, only an inequality of one clock: the harness's time lies inside the
    call's wall time, and each sleep lies inside the harness's window, so if the sleeps are
    subtracted ``seconds <= wall - slept`` holds exactly; if they are counted it cannot."""
    inputs = _inputs(name, square_data, trained)
    slept = 0.0

    def sleepy(_model, _step) -> None:
        nonlocal slept
        t0 = time.perf_counter()
        time.sleep(0.01)
        slept += time.perf_counter() - t0

    start = time.perf_counter()
    result, seconds = methods.run(
        name, copy.deepcopy(trained), inputs, _hp(name), seed=0, monitor=sleepy
    )
    wall = time.perf_counter() - start
    assert result.info["steps"] >= 1 and slept >= 0.01 * (result.info["steps"] + 1)
    assert 0 <= seconds <= wall - slept, (
        f"{name}: time_s = {seconds:.3f} s but the call took {wall:.3f} s of which {slept:.3f} s "
        f"were spent sleeping in the monitor: monitoring time is counted as the method's time"
    )


def test_finetune_never_sees_the_forget_class(square_data, trained, spy_loaders):
    inputs = _inputs("finetune", square_data, trained)
    methods.run("finetune", copy.deepcopy(trained), inputs, _hp("finetune"), seed=0)
    _, labels = spy_loaders
    seen = torch.cat(labels)
    assert len(seen) == CONFIG["finetune"]["epochs"] * (K - 1) * N_PER_CLASS
    assert FORGET not in seen.tolist()


# ------------------------------------------------------------------------------------------
# 2. Defining behaviour
# ------------------------------------------------------------------------------------------


def _functional_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Gradient of the mean CE w.r.t. every parameter through torch.func (eval mode)."""
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}

    def loss(p):
        out = torch.func.functional_call(model, (p, buffers), (x,))
        return F.cross_entropy(out, y)

    return torch.func.grad(loss)(params)


@pytest.mark.parametrize("lam", [0.5, 3.0])  # 3.0: some selected β clamp at 1 (unchanged)
def test_ssd_dampens_exactly_the_selected_parameters(square_data, model, lam):
    alpha = 1.5
    inputs = _inputs("ssd", square_data, model)
    big = 10_000  # one batch per set: the importance is the squared full-set gradient
    xf, yf = next(iter(inputs.forget.loader(big)))
    xr, yr = next(iter(inputs.retain.loader(big)))
    g_f = _functional_grad(model, xf, yf)
    g_r = _functional_grad(model, xr, yr)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    res, _ = methods.run("ssd", model, inputs, {"alpha": alpha, "lambda": lam, "batch_size": big})
    n_selected = n_total = n_clamped = 0
    for n, p in res.model.named_parameters():
        i_f = g_f[n] ** 2
        i_d = (g_f[n] ** 2 + g_r[n] ** 2) / 2  # one forget batch + one retain batch
        sel = i_f > alpha * i_d
        beta = torch.clamp(lam * i_d / i_f, max=1.0)
        assert torch.equal(p[~sel], before[n][~sel]), n  # others bitwise unchanged
        assert torch.allclose(p[sel], before[n][sel] * beta[sel], rtol=1e-4, atol=1e-7), n
        n_clamped += int((beta[sel] == 1).sum())
        n_selected += int(sel.sum())
        n_total += sel.numel()
    assert 0 < n_selected < n_total  # the check is not vacuous
    assert (n_clamped > 0) == (lam > 1)
    assert res.info["dampened"] == n_selected
    for n, b in res.model.named_buffers():  # BN statistics are not parameters: untouched
        assert torch.equal(b, buffers[n])


def test_ssd_importance_is_the_mean_over_batches_of_squared_batch_gradients(square_data, model):
    from pbu.methods.ssd import squared_grad_sums

    forget = square_data.subset(class_split(square_data.labels, FORGET)[0])  # 30 samples
    sums, count = squared_grad_sums(model, forget.loader(7))
    assert count == 5
    x_all, y_all = forget.images, forget.labels
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for start in range(0, 30, 7):
        x, y = next(
            iter(
                TensorImages(
                    forget.spec, x_all[start : start + 7], y_all[start : start + 7]
                ).loader(7)
            )
        )
        for n, g in _functional_grad(model, x, y).items():
            expected[n] += g**2
    for n in expected:
        assert torch.allclose(sums[n], expected[n], rtol=1e-4, atol=1e-10), n


def test_ssd_with_paper_alpha_selects_nothing_when_the_forget_share_is_large(square_data, model):
    """With 4 classes I_Df <= 2·I_D (one of two batches), so alpha = 10 can never select."""
    inputs = _inputs("ssd", square_data, model)
    res, _ = methods.run("ssd", model, inputs, {"alpha": 10.0, "lambda": 1.0, "batch_size": 10_000})
    assert res.info["dampened"] == 0


def test_random_other_labels_never_draw_the_true_class():
    from pbu.methods.random_labels import random_other_labels

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (20_000,), generator=g)
    out = random_other_labels(y, 5, g)
    assert out.dtype == torch.long and out.shape == y.shape
    assert (out != y).all() and out.min() >= 0 and out.max() < 5
    for c in range(5):  # uniform over the 4 other classes
        counts = torch.bincount(out[y == c], minlength=5).float()
        assert counts[c] == 0
        share = counts[torch.arange(5) != c] / counts.sum()
        assert torch.allclose(share, torch.full((4,), 0.25), atol=0.03)
    with pytest.raises(ValueError):
        random_other_labels(y, 1, g)


def test_random_labels_run_pushes_forget_predictions_away(square_data, model):
    inputs = _inputs("random_labels", square_data, model)
    res, _ = methods.run("random_labels", model, inputs, _hp("random_labels", lr=0.01), seed=0)
    x, y = next(iter(inputs.forget.loader(100)))
    with torch.no_grad():
        assert (res.model(x).argmax(1) == y).float().mean() < 0.5


def test_bad_teaching_targets_come_from_the_right_teacher():
    from pbu.methods.bad_teaching import bad_teacher_targets

    torch.manual_seed(0)
    good, bad = torch.randn(6, 5), torch.randn(6, 5)
    is_forget = torch.tensor([True, False, True, False, False, True])
    t = bad_teacher_targets(good, bad, is_forget, temperature=2.0)
    for i in range(6):
        src = bad if is_forget[i] else good
        other = good if is_forget[i] else bad
        assert torch.allclose(t[i], F.softmax(src[i] / 2.0, dim=0))
        assert not torch.allclose(t[i], F.softmax(other[i] / 2.0, dim=0))
    assert torch.allclose(t.sum(1), torch.ones(6))


def test_incompetent_teacher_is_a_seeded_random_init_of_the_same_architecture(model):
    from pbu.methods.bad_teaching import incompetent_teacher

    original = copy.deepcopy(model.state_dict())
    rng_before = torch.get_rng_state()
    a, b, c = (
        incompetent_teacher(model, 1),
        incompetent_teacher(model, 1),
        incompetent_teacher(model, 2),
    )
    assert torch.equal(torch.get_rng_state(), rng_before)  # global stream untouched
    assert type(a) is type(model) and not a.training
    for (n, pa), pb, pc, pm in zip(
        a.named_parameters(), b.parameters(), c.parameters(), model.parameters()
    ):
        assert not pa.requires_grad
        assert torch.equal(pa, pb), n  # same seed, same teacher
        if pa.numel() > 1 and "weight" in n and pa.dim() > 1:
            assert not torch.equal(pa, pc), n  # another seed, another teacher
            assert not torch.equal(pa, pm), n  # re-initialised, not θ*
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())


def test_salun_updates_only_the_masked_weights(square_data, model):
    frac = CONFIG["salun"]["mask_fraction"]
    inputs = _inputs("salun", square_data, model)
    xf, yf = next(iter(inputs.forget.loader(10_000)))
    g = _functional_grad(model, xf, yf)  # independent saliency: |∇ forget CE| at θ*
    flat = torch.cat([v.abs().flatten() for v in g.values()])
    k = round(frac * flat.numel())
    threshold = torch.topk(flat, k).values.min()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res, _ = methods.run("salun", model, inputs, _hp("salun", batch_size=10_000), seed=0)
    assert res.info["masked"] == k
    changed_in_mask = in_mask = 0
    for n, p in res.model.named_parameters():
        mask = g[n].abs() >= threshold
        assert torch.equal(p[~mask], before[n][~mask]), n  # bitwise unchanged
        changed_in_mask += int((p[mask] != before[n][mask]).sum())
        in_mask += int(mask.sum())
    assert in_mask == k
    assert changed_in_mask > 0.9 * in_mask  # and the masked ones did train


def test_neggrad_increases_the_forget_loss(square_data, model):
    # BN in eval mode, so the loss that is ascended is the one measured (in train mode the
    # running statistics also move towards forget-only batch statistics).
    inputs = _inputs("neggrad", square_data, model)
    ce0 = _ce(model, inputs.forget)
    res, _ = methods.run(
        "neggrad",
        copy.deepcopy(model),
        inputs,
        _hp("neggrad", epochs=2, batch_size=10, lr=0.01, stop_rule="none", bn_mode="eval"),
        seed=0,
    )
    assert _ce(res.model, inputs.forget) > ce0 + 1.0
    assert res.info["stop_step"] is None and res.info["steps"] == 6
    ces = [r["ce_forget"] for r in res.history]
    assert ces[-1] > ces[0]


def test_neggrad_stop_rule_ends_at_zero_forget_accuracy(square_data, model):
    inputs = _inputs("neggrad", square_data, model)
    res, _ = methods.run("neggrad", model, inputs, _hp("neggrad", batch_size=8, lr=0.01), seed=0)
    accs = [r["acc_forget_train"] for r in res.history]
    assert res.info["stop_step"] == res.info["steps"] == len(accs)
    assert accs[-1] == 0.0 and all(a > 0 for a in accs[:-1])


def test_neggrad_plus_ascent_term_raises_the_forget_loss(square_data, model):
    """Same run with and without the ascent term (alpha = 1: plain retain fine-tuning).

    Measured in eval mode, the forget loss can fall under pure retain fine-tuning (BatchNorm
    statistics and shared features improve), so the comparison is against that run.
    """
    inputs = _inputs("neggrad_plus", square_data, model)
    ce = {}
    for a in (1.0, 0.5):
        res, _ = methods.run(
            "neggrad_plus",
            copy.deepcopy(model),
            inputs,
            _hp("neggrad_plus", epochs=2, batch_size=4, alpha=a, lr=0.01),
            seed=0,
        )
        ce[a] = _ce(res.model, inputs.forget), _ce(res.model, inputs.retain)
        assert res.info["steps"] == 2 * RETAIN_SUBSET // 4  # epochs are over the retain subset
    assert ce[0.5][0] > 2 * ce[1.0][0]
    assert ce[0.5][0] - ce[1.0][0] > ce[0.5][1] - ce[1.0][1]


def test_unsir_noise_raises_the_forget_class_loss_above_random_noise(model):
    from pbu.methods.unsir import learn_error_max_noise

    hp = CONFIG["unsir"]
    state = copy.deepcopy(model.state_dict())
    model.train()
    shape = (16, 1, 28, 28)
    noise = learn_error_max_noise(
        model,
        FORGET,
        shape,
        steps=hp["noise_steps"],
        lr=hp["noise_lr"],
        reg=hp["noise_reg"],
        seed=0,
        device=torch.device("cpu"),
    )
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # untouched
    target = torch.full((16,), FORGET)
    model.eval()
    with torch.no_grad():
        ce_noise = F.cross_entropy(model(noise), target).item()
        random = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        ce_random = F.cross_entropy(model(random), target).item()
    assert noise.shape == shape and ce_noise > ce_random + 0.5


def test_unsir_impair_step_forgets_without_seeing_the_forget_class(square_data, model):
    inputs = _inputs("unsir", square_data, model)
    assert inputs.forget is None
    res, _ = methods.run(
        "unsir", model, inputs, _hp("unsir", impair_lr=0.02, batch_size=16, repair_epochs=0), seed=0
    )
    forget, retain = (square_data.subset(i) for i in class_split(square_data.labels, FORGET))
    with torch.no_grad():
        for data, lo, hi in ((forget, 0.0, 0.5), (retain, 0.9, 1.0)):
            x, y = next(iter(data.loader(1000)))
            assert lo <= (res.model(x).argmax(1) == y).float().mean() <= hi


def test_scrub_max_step_increases_kl_on_forget(square_data, model):
    from pbu.methods._common import distill_kl, frozen_copy
    from pbu.methods.scrub import scrub_max_step

    teacher = frozen_copy(model)
    x, _ = next(iter(square_data.subset(class_split(square_data.labels, FORGET)[0]).loader(30)))

    def kl() -> float:
        model.eval()
        with torch.no_grad():
            return distill_kl(model(x), teacher(x), 4.0).item()

    before = kl()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        model.train()
        scrub_max_step(model, teacher, x, opt, 4.0)
    assert kl() > before + 1e-3


def test_distill_kl_matches_the_definition():
    from pbu.methods._common import distill_kl

    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    p_t, p_s = F.softmax(t / 2, 1), F.softmax(s / 2, 1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * 4
    assert distill_kl(s, t, 2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distill_kl(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_boundary_shrink_neighbours_are_never_the_true_class_and_predictions_move_there(
    square_data, model
):
    from pbu.methods.boundary_shrink import fgsm_pixel, neighbour_labels

    spec = square_data.spec
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    inputs = _inputs("boundary_shrink", square_data, model)
    x, y = next(iter(inputs.forget.loader(100)))
    reference = copy.deepcopy(model).eval()
    nbr, success = neighbour_labels(reference, x, y, 0.1, mean, std)
    assert (nbr != y).all()
    assert (~success).any()  # FGSM alone fails somewhere: the true-class exclusion is exercised
    # Independent check: the top non-true class of the reference at the FGSM point.
    adv = fgsm_pixel(reference, x, y, 0.1, mean, std)
    pixels, adv_pixels = x * std + mean, adv * std + mean
    assert adv_pixels.min() >= -1e-6 and adv_pixels.max() <= 1 + 1e-6
    assert (adv_pixels - pixels).abs().max() <= 0.1 + 1 / 255 + 1e-5
    with torch.no_grad():
        logits = reference(adv)
    logits[torch.arange(len(y)), y] = -float("inf")
    assert torch.equal(nbr, logits.argmax(1))

    res, _ = methods.run(
        "boundary_shrink",
        model,
        inputs,
        _hp("boundary_shrink", epochs=10, lr=0.01, batch_size=10),
        seed=0,
    )
    with torch.no_grad():
        pred = res.model(x).argmax(1)
        before = reference(x).argmax(1)
    assert (before == y).all()
    assert (pred == nbr).float().mean() > 0.8
    assert all(0 <= r["attack_success"] <= 1 for r in res.history)


# ------------------------------------------------------------------------------------------
# 3. Hyperparameters
# ------------------------------------------------------------------------------------------


def test_config_has_exactly_the_declared_hparams_of_every_method():
    assert set(CONFIG) == set(ALL)
    for name in ALL:
        check_hparams(methods.get_method(name), CONFIG[name])  # raises if not exact


@pytest.mark.parametrize("name", ALL)
def test_missing_or_unknown_hparam_is_an_error_naming_it(name, square_data, trained):
    spec = methods.get_method(name)
    first = spec.hparams[0]
    missing = {k: v for k, v in CONFIG[name].items() if k != first}
    with pytest.raises(ValueError, match=rf"missing hyperparameter\(s\) {first}\b"):
        check_hparams(spec, missing)
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) bogus_knob"):
        check_hparams(spec, {**CONFIG[name], "bogus_knob": 1})
    inputs = _inputs(name, square_data, trained)
    with pytest.raises(ValueError, match=first):  # the harness checks before running
        methods.run(name, copy.deepcopy(trained), inputs, missing)


@pytest.mark.parametrize(
    "name,key,bad",
    [
        ("finetune", "lr", 0.0),
        ("neggrad", "bn_mode", "frozen"),
        ("neggrad", "stop_rule", "x"),
        ("neggrad_plus", "alpha", 1.5),
        ("salun", "mask_fraction", -0.1),
        ("scrub", "temperature", 0),
        ("unsir", "noise_samples", 0),
        ("ssd", "alpha", -1.0),
        ("bad_teaching", "lr", -1.0),
        ("boundary_shrink", "bound", 0.0),
        ("random_labels", "epochs", 0),
    ],
)
def test_invalid_hparam_values_are_rejected_by_name(name, key, bad, square_data, trained):
    inputs = _inputs(name, square_data, trained)
    with pytest.raises(ValueError, match=rf"{name}\.{key}"):
        methods.run(name, copy.deepcopy(trained), inputs, _hp(name, **{key: bad}))
