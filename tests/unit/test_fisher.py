"""pbu.fisher against independent computations.

- a brute force (``pbu.fisher.reference.brute_force``): float64, plain ``torch.autograd.grad``
  looped over samples and classes;
- nngeometry's ``FIM(..., PMatDiag, variant="classif_logits")``, the authors' tool;
- the three backends of ``fisher_diagonal`` (func, probe, chain) against each other, each chosen
  by its ``backend`` argument, and their knobs by ``settings``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pbu.fisher import FisherSettings, fisher_diagonal
from pbu.fisher.checks import Unsupported
from pbu.fisher.cotangents import sample_labels, true_cotangents
from pbu.fisher.probe import ProbePlan
from pbu.fisher.reference import brute_force

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_fisher  # noqa: E402  (nngeometry's diagonal cut per parameter, shared)

BACKENDS = ("func", "probe")  # every model; "chain" only for chains (below)


class Tiny(nn.Module):
    """Conv2d + BatchNorm2d + Linear + BatchNorm1d, sized so both conv code paths run:
    conv1 has 36 output pixels (direct per-sample GEMM), conv2 has 9 (Gram form)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)  # [B, 2, 6, 6] -> [B, 3, 6, 6]
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)  # -> [B, 4, 3, 3]
        self.fc1 = nn.Linear(36, 6)
        self.bn2 = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.conv2(h)).flatten(1)
        return self.fc2(torch.relu(self.bn2(self.fc1(h))))


class Odd(nn.Module):
    """Paths beyond Linear/Conv2d/BN: a grouped conv and GroupNorm (per-module torch.func), a
    residual with an in-place ReLU, Linear on [B, L, in], a conv with fewer inputs than outputs,
    and a parameter owned by the root module itself."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 1)  # fewer inputs (2) than outputs (8): flipped GEMM
        self.gconv = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.gn = nn.GroupNorm(2, 8)
        self.seq = nn.Linear(8, 3)  # applied to [B, 16, 8]: per-position features
        self.head = nn.Linear(48, num_classes)
        self.temperature = nn.Parameter(torch.tensor(1.3))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)  # [B, 8, 4, 4]
        h = h + self.gn(self.gconv(h))
        h = F.relu(h, inplace=True)
        h = self.seq(h.flatten(2).transpose(1, 2))  # [B, 16, 3]
        return self.head(h.flatten(1)) * self.temperature


def _with_running_stats(model: nn.Module, x: Tensor) -> nn.Module:
    """Give BN layers non-trivial running statistics, then switch to eval."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x + 0.5 * torch.randn_like(x))
    return model.eval()


def _data(
    n: int, shape: tuple[int, ...], classes: int, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, *shape, generator=g, dtype=dtype),
        torch.randint(0, classes, (n,), generator=g),
    )


def _batches(x: Tensor, y: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _true_weights(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)


def _assert_close(ours: dict[str, Tensor], ref: dict[str, Tensor], rtol: float) -> None:
    assert list(ours) == list(ref)
    for n in ref:
        scale = ref[n].abs().max().item()
        assert scale > 0, n  # a zero reference would make the comparison vacuous
        torch.testing.assert_close(
            ours[n], ref[n], rtol=rtol, atol=rtol * 1e-6 * scale, msg=lambda m, n=n: f"{n}: {m}"
        )


@pytest.fixture(scope="module", params=[3, 7], ids=["K3", "K7"])
def tiny(request: pytest.FixtureRequest) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(1)
    k = request.param
    x, y = _data(6, (2, 6, 6), k)
    model = _with_running_stats(Tiny(k).double(), x)
    return model, x, y


@pytest.mark.parametrize("backend", BACKENDS)
def test_true_matches_brute_force(tiny: tuple[nn.Module, Tensor, Tensor], backend: str) -> None:
    model, x, y = tiny
    ref = brute_force(model, x, _true_weights(model, x))
    ours = fisher_diagonal(model, _batches(x, y, 4), "true", chunk_size=3, backend=backend)
    _assert_close(ours, ref, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empirical_matches_brute_force(
    tiny: tuple[nn.Module, Tensor, Tensor], backend: str
) -> None:
    model, x, y = tiny
    k = model.fc2.out_features
    ref = brute_force(model, x, F.one_hot(y, k).double())
    ours = fisher_diagonal(model, _batches(x, y, 4), "empirical", chunk_size=3, backend=backend)
    _assert_close(ours, ref, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mc_matches_brute_force_on_the_same_labels(
    tiny: tuple[nn.Module, Tensor, Tensor], backend: str
) -> None:
    model, x, y = tiny
    k, s = model.fc2.out_features, 5
    with torch.no_grad():  # one loader batch: uniforms [N, S] from a generator seeded with 7
        uniform = torch.rand(
            len(x), s, generator=torch.Generator().manual_seed(7), dtype=torch.float64
        )
        labels = sample_labels(torch.log_softmax(model(x), 1), uniform)  # [N, S]
    counts = F.one_hot(labels, k).sum(1).double() / s  # [N, K] weight of each class
    ref = brute_force(model, x, counts)
    ours = fisher_diagonal(
        model, [(x, y)], "mc", mc_samples=s, seed=7, chunk_size=4, backend=backend
    )
    _assert_close(ours, ref, rtol=1e-6)
    other = fisher_diagonal(model, [(x, y)], "mc", mc_samples=s, seed=8, backend=backend)
    assert not torch.allclose(other["fc2.weight"], ours["fc2.weight"])  # the seed is used


def test_mc_converges_to_true(tiny: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = tiny
    true = fisher_diagonal(model, [(x, y)], "true", backend="func")
    mc = fisher_diagonal(model, [(x, y)], "mc", mc_samples=3000, backend="func")
    for n in true:  # total Fisher per tensor; Monte-Carlo error here is a few percent at most
        rel = abs(mc[n].sum().item() / true[n].sum().item() - 1)
        assert rel < 0.1, (n, rel)


def test_true_cotangents_factor_the_softmax_covariance() -> None:
    """Σ_j c_j c_jᵀ = diag(p) − ppᵀ entry by entry, also for probabilities far below 1e-16."""
    logits = torch.tensor(
        [[0.0, 1.0, -2.0, 0.5], [80.0, 0.0, -40.0, 5.0], [-3.0, 50.0, 49.0, -60.0]],
        dtype=torch.float64,
    )
    logp = torch.log_softmax(logits, 1)
    p = logp.exp()
    c = true_cotangents(logp)  # [B, K-1, K]
    assert c.shape == (3, 3, 4)
    got = torch.einsum("bjk,bjl->bkl", c, c)
    off = 1 - torch.eye(4, dtype=torch.float64)
    rest = (p[:, None, :] * off).sum(-1)  # Σ_{j≠i} p_j, the exact 1 − p_i
    want = -p[:, :, None] * p[:, None, :] * off + torch.diag_embed(p * rest)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def _nng_dict(model: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """nngeometry's flat diagonal, cut per parameter by its own layer positions."""
    from nngeometry.layercollection import LayerCollection

    out = bench_fisher.nngeometry_per_parameter(model, flat)
    lc = LayerCollection.from_model(model)
    assert sum(v.numel() for v in out.values()) == lc.numel() == flat.numel()
    return out


def _nngeometry_fim(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatDiag
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    fim = FIM(
        model=model, loader=loader, representation=PMatDiag, variant="classif_logits", device="cpu"
    )
    return _nng_dict(model, fim.get_diag())


@pytest.mark.parametrize("backend", [*BACKENDS, "chain"])
def test_true_matches_nngeometry(backend: str) -> None:
    pytest.importorskip("nngeometry")
    from pbu.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=28)
    x, y = _data(32, (1, 28, 28), 10, dtype=torch.float32)
    model = _with_running_stats(model, x)
    ref = _nngeometry_fim(model, x, y)
    assert set(ref) == {n for n, _ in model.named_parameters()}
    ours = fisher_diagonal(model, _batches(x, y, 16), "true", backend=backend)
    for n, r in ref.items():
        finite = torch.isfinite(r)
        assert finite.float().mean() > 0.99, n  # untrained: nngeometry is finite here
        rel = ((ours[n] - r).abs() / r.abs().clamp_min(1e-30))[finite].max().item()
        assert rel <= 1e-4, (n, rel)


@pytest.mark.parametrize("backend", BACKENDS)
def test_confident_model_stays_finite_and_accurate(backend: str) -> None:
    torch.manual_seed(2)
    x, y = _data(8, (2, 6, 6), 5)
    model = _with_running_stats(Tiny(5).double(), x)
    with torch.no_grad():
        model.fc2.weight.mul_(300)
        model.fc2.bias.mul_(300)
        logp = torch.log_softmax(model(x), 1)
    lost = -torch.expm1(logp.max(1).values)  # 1 - p_max, exactly
    confident = (lost < 1e-9).nonzero()[:, 0]
    assert len(confident) >= 2  # 1 - p_max far below float32's epsilon for these samples
    model32 = copy.deepcopy(model).float()
    y = logp.argmax(1)  # empirical with the predicted label: its gradient is (1 - p_y) sized
    for kind in ("true", "empirical"):
        for i in confident.tolist():  # one sample each: no less confident one sets the scale
            ref = fisher_diagonal(model, [(x[i : i + 1], y[i : i + 1])], kind, backend=backend)
            ours = fisher_diagonal(
                model32, [(x[i : i + 1].float(), y[i : i + 1])], kind, backend=backend
            )
            for n, r in ref.items():
                # float32 keeps ~1e-7 of the tensor's scale; computing 1 - p_max as 1 - p in
                # float32 would give 0 instead of ~1e-10 and errors of order one here.
                err = ((ours[n].double() - r).abs().max() / r.abs().max()).item()
                assert err < 1e-4, (kind, i, n, err)
    with torch.no_grad():  # extreme: other classes' probabilities underflow to 0 in float32
        model32.fc2.weight.mul_(100)
        model32.fc2.bias.mul_(100)
    for kind in ("true", "empirical", "mc"):
        ours = fisher_diagonal(model32, [(x.float(), y)], kind, backend=backend)
        for n, f in ours.items():
            assert torch.isfinite(f).all() and (f >= 0).all(), (kind, n)


def test_keys_shapes_and_frozen_parameters() -> None:
    torch.manual_seed(3)
    x, y = _data(5, (2, 6, 6), 5)
    model = _with_running_stats(Tiny(5).double(), x)
    full = fisher_diagonal(model, [(x, y)], "true")
    assert list(full) == [n for n, _ in model.named_parameters()]
    for n, p in model.named_parameters():
        assert full[n].shape == p.shape and full[n].dtype == p.dtype
    model.conv1.weight.requires_grad_(False)
    model.bn2.bias.requires_grad_(False)
    for backend in BACKENDS:
        part = fisher_diagonal(model, [(x, y)], "true", backend=backend)
        assert list(part) == [n for n, p in model.named_parameters() if p.requires_grad]
        assert "conv1.weight" not in part and "bn2.bias" not in part
        for n in part:  # freezing a parameter does not change the others' Fisher
            torch.testing.assert_close(part[n], full[n], rtol=1e-10, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_modes_and_running_stats_are_untouched(backend: str) -> None:
    torch.manual_seed(4)
    x, y = _data(6, (2, 6, 6), 5)
    model = _with_running_stats(Tiny(5).double(), x)
    model.train()
    model.bn2.eval()  # a mixed state must come back exactly
    before = {n: b.clone() for n, b in model.named_buffers()}
    modes = {n: m.training for n, m in model.named_modules()}
    for bn_mode in ("eval", "train"):
        fisher_diagonal(model, _batches(x, y, 3), "true", bn_mode=bn_mode, backend=backend)
        assert {n: m.training for n, m in model.named_modules()} == modes
        for n, b in model.named_buffers():
            assert torch.equal(b, before[n]), (bn_mode, n)


def _batch_stat_model(model: nn.Module, x: Tensor) -> nn.Module:
    """A copy whose BN running stats are the batch statistics train-mode BN uses on x."""
    stats: dict[str, tuple[Tensor, Tensor]] = {}
    probe = copy.deepcopy(model).train()
    for name, mod in probe.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):

            def hook(m: nn.Module, args: tuple[Tensor], name: str = name) -> None:
                dims = [d for d in range(args[0].dim()) if d != 1]
                stats[name] = (args[0].mean(dims), args[0].var(dims, unbiased=False))

            mod.register_forward_pre_hook(hook)
    with torch.no_grad():
        train_out = probe(x)
    fixed = copy.deepcopy(model).eval()
    for name, mod in fixed.named_modules():
        if name in stats:
            mod.running_mean.copy_(stats[name][0])
            mod.running_var.copy_(stats[name][1])
    with torch.no_grad():  # same function of x as train-mode BN on this batch
        torch.testing.assert_close(fixed(x), train_out)
    return fixed


@pytest.mark.parametrize("backend", BACKENDS)
def test_bn_train_mode_uses_each_batch_statistics(backend: str) -> None:
    torch.manual_seed(5)
    x, y = _data(8, (2, 6, 6), 5)
    model = _with_running_stats(Tiny(5).double(), x * 3 + 1)  # running stats far from batch
    halves = _batches(x, y, 4)
    ref = {
        n: sum(
            brute_force(
                _batch_stat_model(model, xb), xb, _true_weights(_batch_stat_model(model, xb), xb)
            )[n]
            for xb, _ in halves
        )
        / len(halves)
        for n, _ in model.named_parameters()
    }
    ours = fisher_diagonal(model, halves, "true", bn_mode="train", chunk_size=3, backend=backend)
    _assert_close(ours, ref, rtol=1e-6)
    eval_mode = fisher_diagonal(model, halves, "true", bn_mode="eval", backend=backend)
    assert not torch.allclose(eval_mode["conv1.weight"], ours["conv1.weight"], rtol=1e-2)


@pytest.mark.parametrize("kind", ["true", "empirical", "mc"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_chunk_size_does_not_change_the_result(kind: str, backend: str) -> None:
    torch.manual_seed(6)
    x, y = _data(7, (2, 6, 6), 5)
    model = _with_running_stats(Tiny(5).double(), x)
    mc = dict(mc_samples=2) if kind == "mc" else {}
    a = fisher_diagonal(model, [(x, y)], kind, chunk_size=1, backend=backend, **mc)
    b = fisher_diagonal(model, [(x, y)], kind, chunk_size=64, backend=backend, **mc)
    _assert_close(a, b, rtol=1e-10)  # mc too: labels come from per-batch uniforms


@pytest.mark.parametrize("block", [1, 1 << 30])
def test_block_size_of_per_sample_products_does_not_change_the_result(block: int) -> None:
    """One sample per block (the floor) and every sample in one block (what a GPU gets) give
    the numbers of the default CPU blocks, on both conv forms (direct GEMM and Gram)."""
    torch.manual_seed(6)
    x, y = _data(7, (2, 6, 6), 5)
    model = _with_running_stats(Tiny(5).double(), x)
    ref = fisher_diagonal(model, [(x, y)], "true", backend="probe")
    got = fisher_diagonal(
        model, [(x, y)], "true", backend="probe", settings=FisherSettings(block_floats_cpu=block)
    )
    _assert_close(got, ref, rtol=1e-10)


def test_blocks_are_cache_sized_on_the_cpu_and_large_on_other_devices() -> None:
    s = FisherSettings()
    assert s.block_floats(torch.device("cpu")) == s.block_floats_cpu
    assert s.block_floats(torch.device("meta")) == s.block_floats_gpu
    assert s.block_floats_gpu >= 32 * s.block_floats_cpu
    assert s.stacked(torch.device("cuda")) and not s.stacked(torch.device("cpu"))


@pytest.mark.parametrize("device, switched", [("cpu", False), ("cuda", True)])
def test_tf32_is_off_while_the_fisher_runs_on_cuda_and_restored_after(
    device: str, switched: bool
) -> None:
    """Only the flags are touched, so this runs without a GPU; tests/unit/test_cuda.py checks the
    numbers on one with TF32 left on by the caller."""
    from pbu.fisher.settings import full_fp32

    flags = lambda: (
        torch.backends.cudnn.allow_tf32,  # noqa: E731
        torch.backends.cuda.matmul.allow_tf32,
    )
    saved = flags()
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with full_fp32(torch.device(device)):
            assert flags() == ((False, False) if switched else (True, True))
        assert flags() == (True, True)
        with pytest.raises(RuntimeError, match="boom"):
            with full_fp32(torch.device(device)):
                raise RuntimeError("boom")
        assert flags() == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_model_gives_the_same_result(backend: str) -> None:
    """The CLI may hand over a channels_last model and batches (faster convs on CPU)."""
    torch.manual_seed(9)
    x, y = _data(5, (2, 6, 6), 5)
    model = _with_running_stats(Tiny(5).double(), x)
    ref = fisher_diagonal(model, [(x, y)], "true", backend=backend)
    model.to(memory_format=torch.channels_last)
    ours = fisher_diagonal(
        model, [(x.contiguous(memory_format=torch.channels_last), y)], "true", backend=backend
    )
    _assert_close(ours, ref, rtol=1e-10)


def test_other_modules_match_brute_force() -> None:
    torch.manual_seed(7)
    x, y = _data(5, (2, 4, 4), 4)
    model = Odd(4).double().eval()
    ref = brute_force(model, x, _true_weights(model, x))
    for backend in BACKENDS:
        ours = fisher_diagonal(model, _batches(x, y, 3), "true", chunk_size=2, backend=backend)
        _assert_close(ours, ref, rtol=1e-6)


class Geometry(nn.Module):
    """Convs with at least ``NHWC_MIN_CHANNELS`` inputs (their im2col is the NHWC view) and odd
    geometry: rectangular kernels, strides, dilation, asymmetric padding, a flipped GEMM
    (fewer columns than outputs) and a Gram-form one (few output pixels)."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(5, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
        self.conv2 = nn.Conv2d(6, 40, 1, bias=False)  # 6 columns < 40 outputs: flipped GEMM
        self.conv3 = nn.Conv2d(40, 7, 3, stride=2, padding=1)  # few pixels: Gram form
        self.head = nn.Linear(7 * 2 * 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))  # [B, 40, 4, 3]
        return self.head(torch.tanh(self.conv3(h)).flatten(1))


def test_nhwc_im2col_is_unfold_with_reordered_columns() -> None:
    from pbu.fisher.conv import conv_columns, unfold_nhwc

    torch.manual_seed(3)
    for mod in (
        nn.Conv2d(5, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        nn.Conv2d(4, 2, 3, padding=1),
        nn.Conv2d(6, 2, 1, stride=2),
    ):
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(3, mod.in_channels, 7, 6).contiguous(memory_format=fmt)
            ours = unfold_nhwc(x, mod)  # [B, L, kh·kw·C]
            ref = F.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride)
            assert ours.is_contiguous() and ours.shape == ref.transpose(1, 2).shape
            # the same columns: a per-column weight vector maps back to the weight's layout
            w = torch.randn(1, ours.shape[2])
            torch.testing.assert_close(
                ours @ w[0], ref.transpose(1, 2) @ conv_columns(w, mod).reshape(-1)
            )


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_conv_geometry_matches_brute_force(channels_last: bool) -> None:
    from pbu.fisher.conv import NHWC_MIN_CHANNELS

    assert NHWC_MIN_CHANNELS <= 5  # conv1 really takes the NHWC path
    torch.manual_seed(11)
    x, y = _data(5, (5, 7, 6), 4)
    model = Geometry(4).double().eval()
    ref = brute_force(model, x, _true_weights(model, x))
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    ours = fisher_diagonal(model, _batches(x, y, 3), "true", chunk_size=2, backend="probe")
    _assert_close(ours, ref, rtol=1e-6)


class Folded(nn.Module):
    """A first conv and a first Linear feeding BatchNorms whose backward the layer backend cuts
    (their inputs need no gradient): the conv's output is also used by a residual (a second
    consumer; it has more outputs than inputs per position, so a channels_last gradient is used
    as a strided view), the Linear's BN has a frozen γ."""

    def __init__(self, num_classes: int = 4, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.conv = nn.Conv2d(2, 24, 3, padding=1)  # I = 18 < 24 outputs
        self.bn = nn.BatchNorm2d(24)
        self.lin = nn.Linear(2 * 4 * 4, 5)
        self.bn1d = nn.BatchNorm1d(5)
        self.head = nn.Linear(24 * 16 + 5, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv(x)  # [B, 24, 4, 4]
        h = torch.relu(self.bn(c)) + 0.5 * c if self.residual else torch.relu(self.bn(c))
        z = torch.tanh(self.bn1d(self.lin(x.flatten(1))))  # [B, 5]
        return self.head(torch.cat([h.flatten(1), z], 1))


@pytest.mark.parametrize("residual", [True, False], ids=["two_consumers", "bn_only"])
def test_cut_batchnorm_backward_matches_brute_force(residual: bool) -> None:
    torch.manual_seed(10)
    x, y = _data(6, (2, 4, 4), 4)
    model = _with_running_stats(Folded(4, residual).double(), x)
    model.bn1d.weight.requires_grad_(False)
    plan = ProbePlan(
        model, {n: p for n, p in model.named_parameters() if p.requires_grad}, FisherSettings()
    )
    try:
        plan.forward(model, x)
        folds = {n: r.fold[0] for n, r in plan.records.items() if r.fold is not None}
    finally:
        plan.remove()
    assert folds == {"conv": "bn", "lin": "bn1d"}  # both BN backwards are cut here
    ref = brute_force(model, x, _true_weights(model, x))
    for backend in BACKENDS:
        ours = fisher_diagonal(model, _batches(x, y, 4), "true", chunk_size=3, backend=backend)
        _assert_close(ours, ref, rtol=1e-6)
    model.to(memory_format=torch.channels_last)
    ours = fisher_diagonal(
        model, [(x.contiguous(memory_format=torch.channels_last), y)], "true", backend="probe"
    )
    _assert_close(ours, ref, rtol=1e-6)


class Shared(nn.Module):
    """One Linear applied twice: per-layer structure does not hold, func must be used."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.inp(torch.tanh(self.inp(x)))))


def test_module_called_twice_falls_back_to_func() -> None:
    torch.manual_seed(8)
    x, y = _data(6, (5,), 3)
    model = Shared().double()
    ref = brute_force(model, x, _true_weights(model, x))
    _assert_close(fisher_diagonal(model, [(x, y)], "true"), ref, rtol=1e-6)  # auto
    with pytest.raises(ValueError, match="backend 'probe' cannot handle.*called more than once"):
        fisher_diagonal(model, [(x, y)], "true", backend="probe")


def test_rejects_bad_arguments() -> None:
    model = Tiny(3).double().eval()
    x, y = _data(2, (2, 6, 6), 3)
    for kwargs, match in (
        ({"kind": "fisher"}, "unknown Fisher kind 'fisher'"),
        ({"bn_mode": "batch"}, "unknown bn_mode 'batch'"),
        ({"backend": "layers"}, "unknown backend 'layers'; allowed: auto, chain, probe, func"),
        ({"kind": "mc", "mc_samples": 0}, "mc_samples must be >= 1"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            fisher_diagonal(model, [(x, y)], **kwargs)
    with pytest.raises(TypeError, match="settings must be a pbu.fisher.FisherSettings"):
        fisher_diagonal(model, [(x, y)], settings={"chain_floats": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="FisherSettings.chain_floats must be >= 0"):
        FisherSettings(chain_floats=-1)
    with pytest.raises(TypeError, match="FisherSettings.block_floats_gpu must be an int"):
        FisherSettings(block_floats_gpu=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no samples"):
        fisher_diagonal(model, [], "true")


class PoolNet(nn.Module):
    """Conv2d→BatchNorm2d→ReLU→MaxPool2d twice in an nn.Sequential (the small CNN's pattern):
    the first block's conv input needs no gradient, so the layer backend cuts it at the pool's
    output (``_PooledChainAcc``); the second block's input does, so it takes the plain path."""

    def __init__(self, num_classes: int = 5, bias: bool = True, inplace: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1, bias=bias),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace),
            nn.MaxPool2d(2),  # [B, 4, 8, 8] -> [B, 4, 4, 4]
            nn.Conv2d(4, 6, 3, padding=1, bias=False),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.MaxPool2d(2),  # -> [B, 6, 2, 2]
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(24, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _pool_net(bias: bool, inplace: bool) -> tuple[nn.Module, Tensor, Tensor]:
    """A PoolNet and images with ties in the first max-pool windows: at positive values with
    equal patches (constant regions) and with different patches (channel 1 sees only the centre
    pixel, and row 6 repeats each value twice: which tied position autograd picks changes that
    channel's weight gradient), and at exactly 0 (zero patches whose BN output is exactly 0 in
    channel 0); negative pre-activations elsewhere."""
    torch.manual_seed(11)
    x, y = _data(8, (2, 8, 8), 5)
    x[:4, :, 1:7, 1:7] = torch.arange(1.0, 5.0, dtype=x.dtype).view(4, 1, 1, 1)  # constant
    x[4:, :, :5, :5] = 0.0  # zero patches
    x[4:, :, 6] = (3.0 + torch.arange(4, dtype=x.dtype) / 10).repeat_interleave(2)  # pairs
    model = PoolNet(5, bias, inplace).double()
    conv, bn = model.features[0], model.features[1]
    with torch.no_grad():  # channel 1 = centre pixels (+ bias): equal on each pair of row 6
        conv.weight[1] = 0.0
        conv.weight[1, :, 1, 1] = 1.0
    model = _with_running_stats(model, x)
    with torch.no_grad():  # channel 0: BN(conv(0)) = γ·(0 − 0)/σ + 0 = 0 exactly
        if conv.bias is not None:
            conv.bias[0] = 0.0
        bn.running_mean[0] = 0.0
        bn.bias[0] = 0.0
        h = torch.relu(bn(conv(x)))  # [8, 4, 8, 8], the first pool's input
        win = h.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)  # [8, 4, 4, 4, 2x2 window]
        top = win.max(-1, keepdim=True).values
        ties = ((win == top).sum(-1) > 1) & (top[..., 0] > 0)
        zero_max = top[..., 0] == 0
        touched_zero = (bn(conv(x)) == 0).any()
    assert ties.sum() >= 8 and zero_max.sum() >= 8 and touched_zero  # the test is not vacuous
    return model, x, y


@pytest.mark.parametrize(
    "bias,inplace", [(True, False), (False, True)], ids=["bias", "no_bias_inplace_relu"]
)
def test_pooled_chain_shortcut_matches_brute_force(bias: bool, inplace: bool) -> None:
    """On the probe backend (PoolNet is also a chain, which ``auto`` would take)."""
    model, x, y = _pool_net(bias, inplace)
    plan = ProbePlan(
        model, {n: p for n, p in model.named_parameters() if p.requires_grad}, FisherSettings()
    )
    try:
        plan.forward(model, x)
        taken = [(p.conv, p.bn) for p in plan.pooled.values()]
    finally:
        plan.remove()
    assert taken == [("features.0", "features.1")]  # the first block only
    ref = brute_force(model, x, _true_weights(model, x))
    ours = fisher_diagonal(model, _batches(x, y, 5), "true", chunk_size=3, backend="probe")
    _assert_close(ours, ref, rtol=1e-6)
    plain = FisherSettings(pool_shortcut=False)  # the plain probe path agrees
    _assert_close(
        fisher_diagonal(
            model, _batches(x, y, 5), "true", chunk_size=3, backend="probe", settings=plain
        ),
        ours,
        rtol=1e-10,
    )
    xl = x.contiguous(memory_format=torch.channels_last)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    _assert_close(fisher_diagonal(model_cl, [(xl, y)], "true", backend="probe"), ref, rtol=1e-6)
    # float32, channels_last and contiguous, against the float64 brute force, on every backend
    for fmt in (torch.channels_last, torch.contiguous_format):
        model32 = copy.deepcopy(model).float().to(memory_format=fmt)
        for backend in ("auto", "probe"):
            ours32 = fisher_diagonal(
                model32, [(x.float().contiguous(memory_format=fmt), y)], "true", backend=backend
            )
            for n, r in ref.items():
                err = ((ours32[n].double() - r).abs().max() / r.abs().max()).item()
                assert err < 1e-5, (fmt, backend, n, err)


def test_pooled_chain_shortcut_in_bn_train_mode_and_few_cotangents() -> None:
    """BN train mode (batch statistics held fixed) takes the shortcut too; with fewer than
    ``pool_min_rank`` cotangents per sample (empirical, mc with 1 label) it is skipped. Same
    numbers either way as the plain probe path, the func and the chain backends."""
    model, x, y = _pool_net(True, False)
    cases = [("true", {}, "train"), ("empirical", {}, "eval"), ("mc", {"mc_samples": 4}, "eval")]
    for kind, extra, bn_mode in cases:
        args = dict(kind=kind, bn_mode=bn_mode, chunk_size=3, **extra)
        ref = fisher_diagonal(model, _batches(x, y, 4), backend="func", **args)
        for backend, settings in (
            ("probe", None),
            ("probe", FisherSettings(pool_shortcut=False)),
            ("chain", None),
        ):
            ours = fisher_diagonal(
                model, _batches(x, y, 4), backend=backend, settings=settings, **args
            )
            _assert_close(ours, ref, rtol=1e-10)


# ------------------------------------------------------------------------------------------
# The chain backend (pbu.fisher.chain): models that are one chain of standard layers.
# ------------------------------------------------------------------------------------------


def _chain_net(k: int, *, bias: bool, inplace: bool) -> nn.Sequential:
    """Every step the chain knows: a first Conv→BN→ReLU→MaxPool block (input needs no
    gradient), a later one (it does), a bare Conv→ReLU→MaxPool, a Conv with >= 4 inputs and a
    stride (NHWC im2col) followed by a standalone BatchNorm2d, Flatten, Dropout, Identity,
    Linear, BatchNorm1d."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=bias),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace),
        nn.MaxPool2d(2),  # [B, 4, 6, 6]
        nn.Conv2d(4, 5, 3, padding=1, bias=not bias),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.MaxPool2d(2),  # [B, 5, 3, 3]
        nn.Conv2d(5, 6, 2, stride=1, padding=1),
        nn.ReLU(inplace),
        nn.MaxPool2d(2),  # [B, 6, 2, 2]
        nn.Conv2d(6, 6, 2, stride=2, bias=bias),
        nn.BatchNorm2d(6),  # [B, 6, 1, 1]
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(6, 7),
        nn.BatchNorm1d(7),
        nn.ReLU(),
        nn.Identity(),
        nn.Linear(7, k),
    )


@pytest.fixture
def chain_spy(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the chunks the chain backend computed (a spy: it changes no code path)."""
    from pbu.fisher.chain import Chain

    calls: list[int] = []
    real = Chain.chunk

    def spy(self, x, cot_of):  # noqa: ANN001, ANN202
        calls.append(x.shape[0])
        return real(self, x, cot_of)

    monkeypatch.setattr(Chain, "chunk", spy)
    return calls


@pytest.mark.parametrize(
    "bias,inplace", [(True, False), (False, True)], ids=["bias", "nobias_inplace"]
)
@pytest.mark.parametrize("kind", ["true", "empirical"])
@pytest.mark.parametrize("stacked", [False, True], ids=["per_cotangent", "stacked"])
def test_chain_matches_brute_force(
    bias: bool, inplace: bool, kind: str, stacked: bool, chain_spy: list[int]
) -> None:
    """``stacked``: the GPU's form of the conv products and input gradients (all R cotangents
    in one kernel), forced onto the CPU here."""
    settings = FisherSettings(stack_device_types=frozenset({"cpu"})) if stacked else None
    torch.manual_seed(5)
    k = 4
    x, y = _data(7, (2, 12, 12), k)
    model = _with_running_stats(_chain_net(k, bias=bias, inplace=inplace).double(), x)
    weights = _true_weights(model, x) if kind == "true" else F.one_hot(y, k).double()
    ref = brute_force(model, x, weights)
    ours = fisher_diagonal(
        model, _batches(x, y, 4), kind, chunk_size=3, backend="chain", settings=settings
    )
    assert sum(chain_spy) == len(x)  # every sample went through the chain
    _assert_close(ours, ref, rtol=1e-6)


def test_chain_with_frozen_parameters_and_bn_train_mode(chain_spy: list[int]) -> None:
    torch.manual_seed(6)
    x, y = _data(8, (2, 12, 12), 3)
    model = _with_running_stats(_chain_net(3, bias=True, inplace=False).double(), x)
    for name, p in model.named_parameters():
        if name.startswith(("0.", "5.", "16.")):  # a first conv, a block BN, a BatchNorm1d
            p.requires_grad_(False)
    ref = brute_force(model, x, _true_weights(model, x))
    ours = fisher_diagonal(model, _batches(x, y, 4), "true", chunk_size=4, backend="chain")
    assert chain_spy and set(ours) == set(ref)
    _assert_close(ours, ref, rtol=1e-6)
    # bn_mode="train": the chain reads the swapped-in batch statistics like the probe path
    chained = fisher_diagonal(model, _batches(x, y, 4), "true", bn_mode="train")  # auto: chain
    plain = fisher_diagonal(model, _batches(x, y, 4), "true", bn_mode="train", backend="probe")
    _assert_close(chained, plain, rtol=1e-10)


@pytest.mark.parametrize("stacked", [False, True], ids=["per_cotangent", "stacked"])
def test_chain_agrees_with_the_probe_path_on_the_small_cnn(
    chain_spy: list[int], stacked: bool
) -> None:
    """float32, channels_last, as the pipeline's fisher job runs it; ``stacked``: the GPU's
    form forced onto the CPU (its conv2 GEMM has R·O = 288 rows against 144 columns, the
    flipped orientation)."""
    from pbu.models import build_model

    settings = FisherSettings(stack_device_types=frozenset({"cpu"})) if stacked else None
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, image_size=28)
    x, y = _data(40, (1, 28, 28), 10, dtype=torch.float32)
    model = _with_running_stats(model, x).to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    for kind in ("true", "mc"):
        chained = fisher_diagonal(
            model, _batches(x, y, 16), kind, chunk_size=8, seed=3, settings=settings
        )  # auto: the chain
        plain = fisher_diagonal(
            model,
            _batches(x, y, 16),
            kind,
            chunk_size=8,
            seed=3,
            backend="probe",
            settings=settings,
        )
        _assert_close(chained, plain, rtol=1e-5)
    assert chain_spy


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.head(self.b(h) + h)


class _Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.a(x)))  # a functional op between two layers


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.a(self.a(x)))


def _tied() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    net[2].weight = net[0].weight  # one parameter, two layers
    return net


@pytest.mark.parametrize(
    "model,why",
    [
        (_Residual(), "layer 'head' does not take the previous layer's output"),
        (_Functional(), "layer 'head' does not take the previous layer's output"),
        (_Twice(), "a layer is called more than once"),
        (_tied(), "a parameter is shared by two layers"),
        (
            nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)),
            r"layer '1' \(Tanh\) is not one the chain knows",
        ),
        (
            nn.Sequential(nn.Linear(4, 4), nn.MaxPool1d(1), nn.Linear(4, 3)),
            r"layer '1' \(MaxPool1d\) is not one the chain knows",
        ),
    ],
    ids=["residual", "functional", "twice", "tied", "unknown_layer", "pool1d"],
)
def test_models_that_are_not_chains_take_the_other_paths(model: nn.Module, why: str) -> None:
    """``auto`` falls back to the other paths; ``backend="chain"`` says why it cannot."""
    from pbu.fisher.chain import Chain

    model = model.double().eval()
    x, y = _data(5, (4,), 3)
    trainable = {n: p for n, p in model.named_parameters()}
    with pytest.raises(Unsupported, match=why):
        Chain.build(model, trainable, x[:1], FisherSettings())
    ref = brute_force(model, x, _true_weights(model, x))
    _assert_close(fisher_diagonal(model, _batches(x, y, 2), "true"), ref, rtol=1e-6)
    with pytest.raises(ValueError, match=f"backend 'chain' cannot handle this model: {why}"):
        fisher_diagonal(model, _batches(x, y, 2), "true", backend="chain")


def test_probe_backend_says_why_it_cannot() -> None:
    """A parameter shared by two modules: ``auto`` computes it with func, ``probe`` refuses."""
    torch.manual_seed(0)  # the model's init, not the global state earlier tests left (a draw
    # whose ReLUs are dead on all five inputs has a zero Fisher: nothing to compare)
    model = _tied().double().eval()
    x, y = _data(5, (4,), 3)
    ref = brute_force(model, x, _true_weights(model, x))
    _assert_close(fisher_diagonal(model, [(x, y)], "true"), ref, rtol=1e-6)
    with pytest.raises(
        ValueError,
        match="backend 'probe' cannot handle this model: parameter shared by 0.weight and 2.weight",
    ):
        fisher_diagonal(model, [(x, y)], "true", backend="probe")


def test_chain_chunks_shrink_to_bound_the_gradients_it_holds(chain_spy: list[int]) -> None:
    """All K−1 gradients are held at once: chunks shrink so one [R, B, ...] tensor stays under
    ``FisherSettings.chain_floats``; the result does not change."""
    torch.manual_seed(5)
    x, y = _data(9, (2, 12, 12), 4)
    model = _with_running_stats(_chain_net(4, bias=True, inplace=False).double(), x)
    ref = fisher_diagonal(model, _batches(x, y, 9), "true", chunk_size=9)
    assert chain_spy[0] == 9
    largest = 4 * 12 * 12  # floats per sample of the largest activation (the first conv's)
    chain_spy.clear()
    small = FisherSettings(chain_floats=3 * 2 * largest)  # R = 3: two samples
    ours = fisher_diagonal(model, _batches(x, y, 9), "true", chunk_size=9, settings=small)
    assert chain_spy == [2, 2, 2, 2, 1]
    _assert_close(ours, ref, rtol=1e-10)
