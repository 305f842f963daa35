"""Distances between two models' output distributions: JS divergence, activation distance,
ZRF (:mod:`pbu.metrics`)."""

from __future__ import annotations

import torch
from torch import Tensor

from pbu.metrics.core import LN2, ArrayLike, _as_tensor, _xlogy_terms

# --------------------------------------------------------------------------------------------
# Distances between output distributions
# --------------------------------------------------------------------------------------------


def _log_softmax_pair(logits_a: ArrayLike, logits_b: ArrayLike) -> tuple[Tensor, Tensor]:
    a, b = _as_tensor(logits_a), _as_tensor(logits_b)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"expected two [N, K] logit tensors of one shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    return torch.log_softmax(a, dim=1), torch.log_softmax(b, dim=1)


def js_divergence_per_sample(logits_a: ArrayLike, logits_b: ArrayLike) -> Tensor:
    """Per-sample Jensen-Shannon divergence (nats, in [0, ln 2]) of the two softmax outputs.

    ``JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``, computed in log
    space (``log m = logsumexp(log p, log q) - ln 2``). Logits may be ``-inf`` (pass
    ``log(probs)`` to give probabilities directly).
    """
    log_p, log_q = _log_softmax_pair(logits_a, logits_b)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - LN2
    kl_pm = _xlogy_terms(log_p.exp(), log_p, log_m).sum(1)
    kl_qm = _xlogy_terms(log_q.exp(), log_q, log_m).sum(1)
    return (0.5 * (kl_pm + kl_qm)).clamp(0.0, LN2)


def js_divergence(logits_a: ArrayLike, logits_b: ArrayLike) -> float:
    """Mean over samples of the per-sample JS divergence (nats, in [0, ln 2]) of the softmaxes."""
    return js_divergence_per_sample(logits_a, logits_b).mean().item()


def activation_distance(logits_a: ArrayLike, logits_b: ArrayLike) -> float:
    """Mean over samples of ``||softmax(a) - softmax(b)||_2`` (Chundawat et al., ``actv_dist``)."""
    log_p, log_q = _log_softmax_pair(logits_a, logits_b)
    return (log_p.exp() - log_q.exp()).norm(dim=1).mean().item()


def zrf(model_logits: ArrayLike, incompetent_logits: ArrayLike) -> float:
    """Zero Retrain Forgetting score as the Bad Teaching paper defines it (Chundawat et al. 2023).

    ``ZRF = 1 - (1/n) sum_i JS(M(x_i), T_d(x_i))`` with ``T_d`` a randomly initialised
    (incompetent) model and JS the true Jensen-Shannon divergence of :func:`js_divergence`
    (natural log), so ZRF lies in ``[1 - ln 2, 1]``; 1 = the model behaves like the incompetent
    teacher on these samples.
    """
    return 1.0 - js_divergence(model_logits, incompetent_logits)


def js_divergence_as_coded(logits_a: ArrayLike, logits_b: ArrayLike) -> float:
    """The "JSDiv" of the Bad Teaching / SSD public code, reproduced on purpose (not a true JS).

    Their code is ``m = (p+q)/2; 0.5*F.kl_div(log p, m) + 0.5*F.kl_div(log q, m)`` on the whole
    ``[N, K]`` softmax matrices with the default ``reduction='mean'``. ``F.kl_div(input, target)``
    is ``target * (log target - input)`` elementwise, so this is

        JS_coded = (1 / (N K)) sum_i [ KL(m_i || p_i) / 2 + KL(m_i || q_i) / 2 ]

    i.e. the KL direction reversed (``m`` against ``p``, not ``p`` against ``m``) and an element
    mean, which divides the per-sample value by the class count ``K``. Unbounded when ``p`` has an
    exact zero where ``q`` does not (``inf``, as in the original).
    """
    log_p, log_q = _log_softmax_pair(logits_a, logits_b)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - LN2
    m = log_m.exp()
    terms = 0.5 * _xlogy_terms(m, log_m, log_p) + 0.5 * _xlogy_terms(m, log_m, log_q)
    return terms.mean().item()  # mean over all N*K elements


def zrf_as_coded(model_logits: ArrayLike, incompetent_logits: ArrayLike) -> float:
    """ZRF as coded by Bad Teaching / SSD (``UnLearningScore``): ``1 - JS_coded``.

    JS_coded is :func:`js_divergence_as_coded`: reversed KL, element-mean (i.e. divided by the
    class count). Reported only to compare with numbers published from that code; :func:`zrf` is
    the paper's definition.
    """
    return 1.0 - js_divergence_as_coded(model_logits, incompetent_logits)
