"""Diagonal Fisher information of a classifier, per parameter, exact and fast.

PBU's β-term weighs each parameter by the diagonal of the Fisher at θ* on the forget class. The
authors computed the "true" (expected) Fisher with nngeometry; :func:`fisher_diagonal` computes
the same quantity without it, never NaN for confident models (nngeometry 0.4 returns NaN for
most entries of a trained small CNN), more accurately in float32, and several times faster
(benchmarks/bench_fisher.py; every measurement is in benchmarks/README.md).

Three kinds, N samples x with logits z(x) ∈ R^K and p = softmax(z):

- ``true``:      F_j = 1/N Σ_x Σ_k p_k (∂ log p_k/∂θ_j)²           (labels unused; the authors')
- ``empirical``: F_j = 1/N Σ_x (∂ log p_y/∂θ_j)²                    (true labels y)
- ``mc``:        F_j = 1/N Σ_x 1/S Σ_s (∂ log p_{ŷ_s}/∂θ_j)²,  ŷ_s ~ p  (seeded sampling)

All three are sums of squared vector-Jacobian products Jᵀc, J = ∂z/∂θ, with R cotangents c per
sample (``true``: K−1 from a stable factorisation of diag(p) − ppᵀ; ``cotangents``).

Three backends give the same numbers (tests check them against each other and a float64 brute
force); ``backend="auto"`` takes the fastest one that handles the model:

- ``chain`` (``chain.py``): the forward is one chain of standard layers (the small CNN); the
  backward is written out by hand for all R cotangents at once.
- ``probe`` (``probe.py``, ``probe_acc.py``): any model whose parameter-owning modules are each
  called once with one tensor; autograd to zero probes on their outputs, then each layer's
  Fisher block from its output gradient without materialising per-sample gradients.
- ``func`` (``func.py``): per-sample gradients of the whole model with ``torch.func``; any
  model, the slow path for big ones.

Shared pieces: ``conv.py`` (per-sample products of shared weights, im2col), ``batchnorm.py``
(BatchNorm statistics), ``checks.py`` (argument checks), ``settings.py``
(:class:`FisherSettings`, the engineering knobs), ``reference.py`` (float64 and brute-force
references for checks). Only the names below are public; the modules are internals.

BatchNorm (``bn_mode``): "eval" (default, the authors' choice) normalises with the running
statistics, so each sample's gradient is well defined. "train" normalises each loader batch with
its own batch statistics (mean and biased variance, as ``BatchNorm`` does in train mode), and takes
every per-sample gradient with those statistics held constant: the path through the batch mean and
variance, which couples the samples of a batch, is dropped. Results then depend on the loader's
batch composition, not on ``chunk_size``. In both modes the running statistics are left untouched
and every module's train/eval flag is restored; dropout is always off.

On a CUDA device, TF32 is off while the Fisher runs (restored after): it would put the result
far from float64.
"""

from pbu.fisher.checks import BACKENDS, BN_MODES, KINDS
from pbu.fisher.diagonal import fisher_diagonal
from pbu.fisher.settings import FisherSettings

__all__ = ["BACKENDS", "BN_MODES", "KINDS", "FisherSettings", "fisher_diagonal"]
