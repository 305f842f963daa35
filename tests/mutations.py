"""Mutation check: break the core numbers on purpose and make sure a fast test notices.

Each :class:`Mutation` names a file, one or more exact snippets of it and their replacements, and
the fast test files that must catch the change. For every mutation the script copies the
repository once (the files git tracks or would track, so uncommitted work counts), applies the
edit to the copy, runs ``pytest -x -m "not slow"`` on those tests, and restores the file:

- *killed*: the tests failed (or ran past the time limit), as they must;
- *survived*: every test passed with the bug in place, so no test guards that line;
- *error*: the snippet is not in the file exactly once, or pytest could not run; fix the list.

Before any mutation, the same tests must pass on the unchanged copy (otherwise a "kill" would
mean nothing), and the copy's ``pbu`` must be the one imported. The exit status is 0 only when
every mutation was killed.

Run it after changing a loss, a split, a metric, the aggregation or a stopping rule; ``.ci/run``
runs it on every CI run (85 mutations with ``-j 2`` on the 2-core machine: 3 min 54 s wall
inside a CI run, 2026-12-06)::

    python tests/mutations.py               # every mutation
    python tests/mutations.py --list        # names, files and tests
    python tests/mutations.py -k pbu -j 2   # the mutations whose name contains "pbu", 2 at once

A mutation whose snippet no longer exists after a refactor is an *error*, not a silent skip:
update the snippet (or drop the mutation) together with the code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    """A named bug: in ``path``, each ``old`` snippet (exactly once) becomes its ``new``."""

    name: str
    path: str
    edits: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]
    what: str  # what the bug does, in words


def _m(
    name: str,
    path: str,
    old: str,
    new: str,
    tests: str | tuple[str, ...],
    what: str,
    *more: tuple[str, str],
) -> Mutation:
    tests = (tests,) if isinstance(tests, str) else tests
    return Mutation(name, path, ((old, new), *more), tuple(tests), what)


PBU = "pbu/methods/pbu.py"
T_PBU, T_METHODS = "tests/unit/methods/test_pbu.py", "tests/unit/methods/test_methods.py"
T_METRICS = "tests/unit/test_metrics.py"
T_FS, T_RFS = "tests/unit/test_forget_score.py", "tests/unit/test_report_forget_score.py"
FS_M = "pbu/metrics/forget_score.py"
T_CLAIMS, T_DEV = "tests/unit/test_claims.py", "tests/unit/test_tune_dev.py"

MUTATIONS: list[Mutation] = [
    # --- the five of issue 17 (the suite used to pass with each of them) -------------------
    _m(
        "pbu-fisher-zeroed",
        PBU,
        "n: fisher[n].detach().to(device=device,",
        "n: 0 * fisher[n].detach().to(device=device,",
        T_PBU,
        "PBU's training loop uses a zero Fisher instead of the one it is given",
    ),
    _m(
        "evaluate-mia-members-swapped",
        "pbu/evaluation.py",
        '("mia_entropy_svc", M.entropy_svc_attack(rtr, rte, ftr, seed=seed, **svc)),',
        '("mia_entropy_svc", M.entropy_svc_attack(rte, rtr, ftr, seed=seed, **svc)),',
        "tests/unit/test_evaluate.py",
        "the MIA's members and non-members are swapped",
    ),
    _m(
        "salun-access-full-train",
        "pbu/methods/salun.py",
        '    "salun",\n    access=FORGET_AND_RETAIN_SUBSET,',
        '    "salun",\n    access=FULL_TRAIN,',
        f"{T_METHODS}::test_each_method_gets_the_data_its_paper_uses_and_no_more",
        "SalUn declares (and gets) the full training set",
        (
            "from pbu.methods import FORGET_AND_RETAIN_SUBSET,",
            "from pbu.methods import FULL_TRAIN, FORGET_AND_RETAIN_SUBSET,",
        ),
    ),
    _m(
        "tracking-drops-mia",
        "pbu/track_plan.py",
        "out = {k: float(v) for k, v in metrics.items() if _finite(v)}",
        "out = {k: float(v) for k, v in metrics.items() if _finite(v) "
        "and not k.startswith('mia_')}",
        "tests/unit/test_tracking.py",
        "MLflow logging silently drops every mia_* metric",
    ),
    _m(
        "atomic-write-in-place",
        "pbu/io.py",
        'fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)\n'
        "    try:\n"
        "        os.fchmod(fd, 0o666 & ~current_umask())\n"
        "    finally:\n"
        "        os.close(fd)",
        "tmp = str(path)",
        "tests/unit/test_io.py",
        "atomic_write writes under the final name",
    ),
    _m(
        "atomic-write-private-mode",
        "pbu/io.py",
        "os.fchmod(fd, 0o666 & ~current_umask())",
        "pass",
        "tests/unit/test_io.py",
        "every written file keeps mkstemp's 0600, whatever the umask (a lab cannot read it)",
    ),
    _m(
        "atomic-write-rename-not-durable",
        "pbu/io.py",
        "    fsync_dir(path.parent)\n",
        "",
        "tests/unit/test_io.py",
        "the folder is not fsynced after the rename",
    ),
    _m(
        "cpu-bf16-degenerate-conv-allowed",
        "pbu/train.py",
        "if min(x.shape[-2:]) == 1 and max(module.stride) > 1",
        "if min(x.shape[-2:]) == 0 and max(module.stride) > 1",
        "tests/unit/test_train.py",
        "bf16 training on the CPU runs strided convs on 1x1 maps (undefined weight gradients)",
    ),
    # --- the harness ------------------------------------------------------------------------
    _m(
        "monitor-time-counted",
        "pbu/methods/__init__.py",
        "elapsed = time.perf_counter() - t0 - spent_monitoring",
        "elapsed = time.perf_counter() - t0",
        f"{T_METHODS}::test_time_spent_in_the_monitor_is_not_the_methods_time",
        "time spent in the monitor is counted as the method's time",
    ),
    _m(
        "inputs-forget-always",
        "pbu/methods/__init__.py",
        "forget = train.subset(forget_idx) if access.forget else None",
        "forget = train.subset(forget_idx)",
        f"{T_METHODS}::test_each_method_gets_the_data_its_paper_uses_and_no_more",
        "methods that never see the forget class are handed it anyway",
    ),
    # --- the losses -------------------------------------------------------------------------
    _m(
        "pbu-descends-on-forget",
        PBU,
        '"term_forget": -cfg.alpha * ce,',
        '"term_forget": cfg.alpha * ce,',
        T_PBU,
        "PBU's α-term descends the forget loss instead of ascending it",
    ),
    _m(
        "pbu-l2-mean",
        PBU,
        "l2_term = l2_term + d2.sum()",
        "l2_term = l2_term + d2.mean()",
        T_PBU,
        "PBU's γ-term averages instead of summing over the parameters",
    ),
    _m(
        "pbu-fisher-scale-ignored",
        PBU,
        "fisher = scale_fisher(fisher, cfg.fisher_scale)",
        "fisher = dict(fisher)",
        T_PBU,
        "PBU's training loop ignores fisher_scale (unit_mean trains with the raw Fisher)",
    ),
    _m(
        "neggrad-descends",
        "pbu/methods/neggrad.py",
        "(-ce).backward()  # ascent",
        "ce.backward()  # ascent",
        f"{T_METHODS}::test_neggrad_increases_the_forget_loss",
        "NegGrad descends the forget loss",
    ),
    _m(
        "neggrad-plus-weights",
        "pbu/methods/neggrad.py",
        "loss = a * ce_r - (1 - a) * ce_f",
        "loss = a * ce_r - a * ce_f",
        f"{T_METHODS}::test_neggrad_plus_ascent_term_raises_the_forget_loss",
        "NegGrad+ weights its ascent term by alpha instead of 1 - alpha",
    ),
    _m(
        "distill-kl-temperature",
        "pbu/methods/_common.py",
        "return kl * temperature**2",
        "return kl * temperature",
        f"{T_METHODS}::test_distill_kl_matches_the_definition",
        "the distillation KL is scaled by T instead of T²",
    ),
    _m(
        "bad-teacher-swapped",
        "pbu/methods/bad_teaching.py",
        "torch.where(is_forget[:, None], p_bad, p_good)",
        "torch.where(is_forget[:, None], p_good, p_bad)",
        f"{T_METHODS}::test_bad_teaching_targets_come_from_the_right_teacher",
        "Bad Teaching distils the forget samples from the competent teacher",
    ),
    _m(
        "ssd-selects-below",
        "pbu/methods/ssd.py",
        "sel = i_f > alpha * i_d",
        "sel = i_f < alpha * i_d",
        f"{T_METHODS}::test_ssd_dampens_exactly_the_selected_parameters",
        "SSD dampens the parameters that are NOT specialised to the forget set",
    ),
    # --- the stopping rules -----------------------------------------------------------------
    _m(
        "pbu-stop-acc-above",
        PBU,
        "acc <= cfg.stop_threshold if cfg.stop_rule",
        "acc >= cfg.stop_threshold if cfg.stop_rule",
        T_PBU,
        "PBU stops while the forget accuracy is still high",
    ),
    _m(
        "pbu-stop-ce-below",
        PBU,
        "else ce >= cfg.stop_threshold",
        "else ce <= cfg.stop_threshold",
        T_PBU,
        "PBU's CE rule stops while the forget loss is still low",
    ),
    _m(
        "pbu-never-checks",
        PBU,
        "if step % cfg.check_every == 0 and check(step):",
        "if step % cfg.check_every == 1 and check(step):",
        T_PBU,
        "PBU never checks its stopping rule when check_every = 1",
    ),
    _m(
        "neggrad-stop-step-off-by-one",
        "pbu/methods/neggrad.py",
        "stop_step = rec.step + 1",
        "stop_step = rec.step",
        f"{T_METHODS}::test_neggrad_stop_rule_ends_at_zero_forget_accuracy",
        "NegGrad records the step before the one where it stopped",
    ),
    _m(
        "tune-feasible-above",
        "pbu/tune.py",
        'metrics["acc_forget_val"] <= threshold',
        'metrics["acc_forget_val"] >= threshold',
        "tests/unit/test_tune.py::test_blind_scores_are_what_they_claim",
        "the tuner calls a trial feasible when it did NOT forget",
    ),
    # --- the splits -------------------------------------------------------------------------
    _m(
        "holdout-given-to-method",
        "pbu/tune_splits.py",
        "return Holdout(train.subset(fit_idx), val.subset(forget_idx),",
        "return Holdout(train, val.subset(forget_idx),",
        "tests/unit/test_tune.py::test_validation_tuning_never_gives_the_method_the_held_out_split",
        "the validation protocol's trials run on the whole training set, held-out split included",
    ),
    _m(
        "unlearn-ignores-holdout",
        "pbu/jobs/common.py",
        "train, held = split.fit, split.record",
        "held = split.record",
        "tests/unit/test_tune.py::test_unlearn_job_with_holdout_never_gives_the_method_the_held_"
        "out_split",
        "pbu unlearn --holdout records the held-out split but hands it to the method anyway",
    ),
    _m(
        "tune-job-validates-on-test",
        "pbu/jobs/tune.py",
        "train, _test = load_data(data, forget)  # the test split is never used\n    net,",
        "_test, train = load_data(data, forget)\n    net,",
        "tests/unit/test_tune.py::test_tune_job_validates_on_training_images_never_test_images",
        "the tune job carves its validation split (and trains) from the test split",
    ),
    _m(
        "class-split-retain-has-forget",
        "pbu/data.py",
        "torch.nonzero(~is_forget).flatten()",
        "torch.arange(len(labels))",
        (
            f"{T_METHODS}::test_inputs_hold_exactly_the_declared_data_as_copies",
            "tests/unit/test_data.py",
        ),
        "the retain split includes the forget class",
    ),
    _m(
        "random-subset-one-short",
        "pbu/data.py",
        "torch.randperm(n, generator=g)[: min(k, n)]",
        "torch.randperm(n, generator=g)[: min(k, n) - 1]",
        f"{T_METHODS}::test_inputs_hold_exactly_the_declared_data_as_copies",
        "a retain subset of k holds k - 1 samples",
    ),
    _m(
        "stratified-subset-one-short",
        "pbu/data.py",
        "torch.randperm(len(idx), generator=g)[:k]",
        "torch.randperm(len(idx), generator=g)[:k - 1]",
        "tests/unit/test_data.py",
        "a stratified sample holds one image fewer per class",
    ),
    # --- the metrics ------------------------------------------------------------------------
    _m(
        "accuracy-counts-errors",
        "pbu/metrics/core.py",
        "100.0 * (logits.argmax(1) == labels)",
        "100.0 * (logits.argmax(1) != labels)",
        (f"{T_METRICS}::test_accuracy_from_hand_made_logits", "tests/unit/test_evaluate.py"),
        "accuracy counts the wrong predictions",
    ),
    _m(
        "js-without-half",
        "pbu/metrics/distance.py",
        "(0.5 * (kl_pm + kl_qm)).clamp(0.0, LN2)",
        "(kl_pm + kl_qm).clamp(0.0, LN2)",
        f"{T_METRICS}::test_js_divergence_matches_scipy",
        "the JS divergence sums the two KLs instead of averaging them",
    ),
    _m(
        "zrf-not-one-minus",
        "pbu/metrics/distance.py",
        "return 1.0 - js_divergence(model_logits, incompetent_logits)",
        "return js_divergence(model_logits, incompetent_logits)",
        f"{T_METRICS}::test_zrf_and_zrf_as_coded_by_hand",
        "ZRF is the JS divergence itself, not 1 - JS",
    ),
    _m(
        "activation-distance-sum",
        "pbu/metrics/distance.py",
        "(log_p.exp() - log_q.exp()).norm(dim=1).mean()",
        "(log_p.exp() - log_q.exp()).norm(dim=1).sum()",
        f"{T_METRICS}::test_activation_distance_matches_numpy",
        "the activation distance sums over samples instead of averaging",
    ),
    _m(
        "confidence-of-top-class",
        "pbu/metrics/core.py",
        "torch.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)",
        "torch.softmax(logits, dim=1).max(1).values",
        f"{T_METRICS}::test_mia_efficacy_salun_uses_true_class_confidence",
        "SalUn's MIA reads the top class's confidence instead of the true class's",
    ),
    # --- the aggregation and the report -----------------------------------------------------
    _m(
        "aggregate-fisher-time-subtracted",
        "pbu/aggregate.py",
        "total = None if any(p is None for p in parts) else sum(parts)",
        "total = None if any(p is None for p in parts) else parts[0] - sum(parts[1:])",
        "tests/unit/test_aggregate.py",
        "PBU's time with its Fisher subtracts the Fisher's time",
    ),
    _m(
        "aggregate-metrics-of-original",
        "pbu/aggregate.py",
        "row.update(metrics)",
        'row.update(ev["metrics"]["original"])',
        "tests/unit/test_aggregate.py",
        "every runs.csv row holds the original model's metrics",
    ),
    _m(
        "report-std-population",
        "pbu/report/stats.py",
        "float(v.std(ddof=1))",
        "float(v.std(ddof=0))",
        "tests/unit/test_report.py",
        "mean ± std uses the population std over seeds",
    ),
    _m(
        "report-rank-farthest-first",
        "pbu/report/stats.py",
        '["_nojs", "js_to_oracle", "acc_gap_to_oracle", "_o"], na_position="last"',
        '["_nojs", "js_to_oracle", "acc_gap_to_oracle", "_o"], na_position="last", ascending=False',
        "tests/unit/test_report.py",
        "the ranking puts the method farthest from the oracle first",
    ),
    _m(
        "report-gap-signed",
        "pbu/report/stats.py",
        "runs[gap] = (runs[col] - runs[ref]).abs()",
        "runs[gap] = runs[col] - runs[ref]",
        "tests/unit/test_report.py",
        "the accuracy gap to the oracle is signed, so errors cancel",
    ),
    _m(
        "paired-difference-sign-flipped",
        "pbu/report/paired.py",
        'both["diff"] = both["a"] - both["b"]',
        'both["diff"] = both["b"] - both["a"]',
        "tests/unit/test_claims.py::test_compare_pairs_by_class_and_seed_and_subtracts_b",
        "the paired difference a − b is computed as b − a",
    ),
    _m(
        "claims-matched-forgetting-dropped",
        "pbu/report/claims.py",
        "matched = [m for m in peers if _forgets(runs, m, threshold)]",
        "matched = list(peers)",
        "tests/unit/test_claims.py::test_c7_matched_forgetting_blind_first_and_flips",
        "C7 compares PBU with methods that did not forget (no matched forgetting)",
    ),
    _m(
        "claims-significance-ignored",
        "pbu/report/verdicts.py",
        "if ci_clear and significant(stat):",
        "if ci_clear:",
        f"{T_CLAIMS}::test_a_claim_needs_the_seed_level_test_not_just_its_interval",
        "a claim holds on its bootstrap CI alone, where the seed-level test is not significant",
    ),
    # --- the seed as the unit (issue 23) ----------------------------------------------------
    _m(
        "bootstrap-resamples-pairs",
        "pbu/report/paired.py",
        'groups = [g.to_numpy(float) for _, g in frame.groupby("seed", sort=True)["v"]]',
        'groups = [np.array([v]) for v in frame["v"]]',
        f"{T_CLAIMS}::test_hierarchical_ci_is_wider_than_the_pair_bootstraps_when_seeds_differ",
        "the bootstrap resamples pairs as if independent instead of seeds, then classes",
    ),
    _m(
        "bootstrap-no-within-seed-resampling",
        "pbu/report/paired.py",
        "within = np.floor(rng.random((n_boot, k, sizes.max())) * n[..., None]).astype(int)",
        "within = np.broadcast_to(np.arange(sizes.max()), (n_boot, k, sizes.max()))",
        f"{T_CLAIMS}::test_hierarchical_ci_by_hand_with_two_seeds_of_one_value",
        "the bootstrap resamples the seeds but never the forget classes within a seed",
    ),
    _m(
        "sign-flip-on-pairs",
        "pbu/report/paired.py",
        'means = seed_means(pairs["seed"], pairs["diff"])',
        'means = pairs["diff"].to_numpy(float)',
        f"{T_CLAIMS}::test_the_smallest_p_with_k_seeds_is_two_to_the_one_minus_k",
        "the sign-flip test counts every (class, seed) pair as a unit (pseudo-replication)",
    ),
    _m(
        "sign-flip-two-sided-not-doubled",
        "pbu/report/paired.py",
        "return min(1.0, 2 * _count_at_least(x, abs(observed) - tol) / total)",
        "return min(1.0, _count_at_least(x, abs(observed) - tol) / total)",
        f"{T_CLAIMS}::test_sign_flip_p_is_the_share_of_sign_patterns_at_least_as_extreme",
        "the two-sided sign-flip p-value counts one tail only",
    ),
    _m(
        "tost-takes-the-smaller-p",
        "pbu/report/paired.py",
        'p_value=float("nan") if any(np.isnan(both)) else max(both),',
        'p_value=float("nan") if any(np.isnan(both)) else min(both),',
        f"{T_CLAIMS}::test_tost_on_identical_shifted_and_noisy_pairs",
        "the TOST reports the smaller one-sided p, so one rejected side makes an equivalence",
    ),
    _m(
        "preliminary-never",
        "pbu/report/paired.py",
        "return 0 < result.n_seeds < seeds_needed(alternative)",
        "return False",
        f"{T_CLAIMS}::test_three_seeds_are_preliminary_with_the_point_estimate",
        "a setting with too few seeds for p < 0.05 still gets a verdict",
    ),
    _m(
        "effect-helps-reads-hurts",
        "pbu/report/verdicts.py",
        "if above.ci_low > 0 and significant(above):\n        return HELPS",
        "if above.ci_low > 0 and significant(above):\n        return HURTS",
        f"{T_CLAIMS}::test_tost_on_identical_shifted_and_noisy_pairs",
        "an effect above 0 reads 'hurts'",
    ),
    _m(
        "c1-ignores-the-stop-variant",
        "pbu/report/claims.py",
        "at = next((m for m, t in stops.items() if t == C1_STOP and m != PBU), None)",
        "at = None",
        f"{T_CLAIMS}::test_c1_at_the_paper_implied_stop_threshold_with_the_trade_off",
        "C1 is read at PBU's own stop threshold even where pbu_stop2 ran",
    ),
    _m(
        "c6-counts-tuning-time",
        "pbu/report/claims.py",
        "runs[TIME_TOTAL] = total - tuning",
        "runs[TIME_TOTAL] = total",
        f"{T_CLAIMS}::test_c6_flips_and_counts_no_tuning_time",
        "C6 counts a per-group tuning record's time in PBU's total",
    ),
    # --- the development-class tuning (issue 23) --------------------------------------------
    _m(
        "dev-loss-ignores-the-oracle",
        "pbu/tune_dev.py",
        "w * abs(metrics[k] - oracle[k])",
        "w * abs(metrics[k])",
        f"{T_DEV}::test_loss_attack_auc_and_the_objective_by_hand",
        "the development-class objective measures the metrics, not their distance to the oracle",
    ),
    _m(
        "dev-scored-on-training-images",
        "pbu/tune_dev.py",
        "forget_val=held.forget_val,",
        "forget_val=held.fit.subset(forget_idx),",
        f"{T_DEV}::test_dev_tuning_scores_each_trial_against_each_seeds_oracle",
        "the development-class trials are scored on training images instead of the held-out split",
    ),
    _m(
        "variant-space-keeps-its-overrides",
        "pbu/tune.py",
        "return {k: v for k, v in space.items() if k not in overrides}",
        "return dict(space)",
        "tests/unit/test_tune.py::test_default_spaces_tune_every_method_alike_and_hold_the_"
        "untuned_values",
        "a variant's search space tunes the values that define it (pbu_no_fisher's beta)",
    ),
    _m(
        "tie-counts-a-repeated-point",
        "pbu/tune_dev.py",
        "others = [i for i in ok if dict(points[i]) != dict(points[best])]",
        "others = [i for i in ok if i != best]",
        f"{T_DEV}::test_tie_report_counts_only_other_hyperparameters_at_the_same_value",
        "a trial that repeats the chosen hyperparameters counts as a tied choice",
    ),
    _m(
        "pretrain-ignores-holdout",
        "pbu/jobs/train.py",
        "held_out_record(train, holdout, seed)\n        train = train.subset(fit_idx)",
        "held_out_record(train, holdout, seed)",
        f"{T_DEV}::test_pretrain_and_oracle_hold_out_the_split",
        "pbu pretrain --holdout records the split but trains on it",
    ),
    _m(
        "frozen-choice-over-overrides",
        "pbu/tuned.py",
        "return {**hparams, **tuned, **overrides}",
        "return {**hparams, **overrides, **tuned}",
        f"{T_DEV}::test_a_variant_takes_its_own_choice_else_its_base_methods_with_its_overrides",
        "a frozen choice overrides the values that define a variant (pbu_stop2's threshold)",
    ),
    _m(
        "frozen-dev-class-reported",
        "pbu/config.py",
        "if dev in classes:",
        "if dev in classes and False:",
        f"{T_DEV}::test_a_run_loads_the_frozen_choice_of_its_setting",
        "a run reports the class its hyperparameters were tuned on",
    ),
    # --- the jobs (which data reaches each stage) -------------------------------------------
    _m(
        "oracle-trains-on-forget-class",
        "pbu/jobs/train.py",
        "train = train.subset(class_split(train.labels, forget)[1])",
        "train = train",
        "tests/unit/test_jobs.py::test_pretrain_and_oracle_records",
        "the oracle is trained on the forget class too",
    ),
    _m(
        "fisher-job-on-retain-data",
        "pbu/jobs/fisher.py",
        "forget_data = train.subset(class_split(train.labels, forget)[0])",
        "forget_data = train.subset(class_split(train.labels, forget)[1])",
        "tests/unit/test_jobs.py::test_fisher_is_the_forget_class_fisher",
        "the Fisher job computes the Fisher on the retained classes",
    ),
    # --- the per-example forget score (issue 22) --------------------------------------------
    _m(
        "forget-score-confidence-counts-the-true-class",
        FS_M,
        "    p[rows, y] = 0.0  # the other classes' mass",
        "    p[rows, y] = p[rows, y]  # the other classes' mass",
        T_FS,
        "the confidence's denominator includes the true class (log p_y instead of its log-odds)",
    ),
    _m(
        "forget-score-perfect-separation-ignored",
        FS_M,
        "    if perfect.any():\n        return cap",
        "    if False:\n        return cap",
        T_FS,
        "a rule that separates perfectly is discarded instead of giving the cap",
    ),
    _m(
        "forget-score-one-sided-rules-kept",
        FS_M,
        "keep = (fpr > 0) & (fnr > 0)",
        "keep = (fpr > 0) | (fnr > 0)",
        T_FS,
        "rules with one error rate at 0 are kept (their ε is infinite)",
    ),
    _m(
        "forget-score-delta-dropped",
        FS_M,
        "a = np.log(np.clip(1.0 - delta - fpr, 0.0, None)) - np.log(fnr)",
        "a = np.log(np.clip(1.0 - fpr, 0.0, None)) - np.log(fnr)",
        T_FS,
        "ε is computed without δ in one of its two directions",
    ),
    _m(
        "forget-score-positive-is-lower-median",
        FS_M,
        "pairs = [(a, b)] if med_a > med_b else",
        "pairs = [(b, a)] if med_a > med_b else",
        T_FS,
        "the single-threshold rule calls the set with the LOWER median positive",
    ),
    _m(
        "forget-score-peaky-guard-inverted",
        FS_M,
        "if small / large < peaky_ratio:",
        "if small / large > peaky_ratio:",
        T_FS,
        "the peaky guard caps ε where the sets are alike in spread, not where one is degenerate",
    ),
    _m(
        "forget-score-window-not-the-peaky-set",
        FS_M,
        "peaky, other = (a, b) if range_a <= range_b else (b, a)",
        "peaky, other = (b, a) if range_a <= range_b else (a, b)",
        T_FS,
        "the two-threshold window is as wide as the WIDER set and predicts it",
    ),
    _m(
        "forget-score-buckets-one-short",
        FS_M,
        "earns = (k + 1) * width <= max_epsilon(n_models) + 1e-12",
        "earns = (k + 1) * width < max_epsilon(n_models)",
        T_FS,
        "the last bucket before ceil(ln(N - 1)) earns nothing",
    ),
    _m(
        "forget-score-max-eps-ln-n",
        FS_M,
        "return math.ceil(math.log(n_models - 1))",
        "return math.ceil(math.log(n_models))",
        T_FS,
        "the buckets end at ceil(ln N) instead of ceil(ln(N - 1))",
    ),
    _m(
        "forget-score-offset-population-sd",
        FS_M,
        "sd = r.std(axis=0, ddof=1) if len(r) > 1",
        "sd = r.std(axis=0, ddof=0) if len(r) > 1",
        T_FS,
        "the offsets use the oracles' population sd instead of their sample sd",
    ),
    _m(
        "forget-score-ceiling-joins-the-oracles",
        "pbu/jobs/forget_score.py",
        "label = CEILING if ceiling else model",
        "label = model",
        T_FS,
        "the ceiling's further oracles are pooled with the run's oracles (no ceiling row)",
    ),
    _m(
        "forget-score-utility-inverted",
        "pbu/jobs/forget_score.py",
        '"utility_score": score * acc / acc_ref if acc_ref > 0 else math.nan,',
        '"utility_score": score * acc_ref / acc if acc > 0 else math.nan,',
        T_FS,
        "the utility weighting divides by the method's A_Dr instead of the oracles'",
    ),
    _m(
        "evaluate-confidences-of-forget-test",
        "pbu/evaluation.py",
        'per_example[name] = M.logit_confidence(*out["forget_train"][:2])',
        'per_example[name] = M.logit_confidence(*out["forget_test"][:2])',
        "tests/unit/test_evaluate.py",
        "the saved per-example confidences are of the forget class's TEST images",
    ),
    _m(
        "batch-records-cumulative-cpu",
        "pbu/jobs/unlearn_batch.py",
        'rec["cpu_s"] = _cpu_s() - (0.0 if i == 0 else cpu0)',
        'rec["cpu_s"] = _cpu_s()',
        "tests/unit/test_unlearn_batch.py",
        "each method of a batched job records the process's CPU so far, not its own",
    ),
    _m(
        "tracking-floor-not-the-originals",
        "pbu/track_plan.py",
        '{"floor": "original", "ceiling": "oracle"}.get(r["method"], r["method"])',
        'r["method"]',
        "tests/unit/test_track_forget_score.py",
        "the original model's and the oracle's runs do not get the floor's and ceiling's scores",
    ),
    # --- attack validity (issue 22) ---------------------------------------------------------
    _m(
        "validity-held-out-also-fitted",
        "pbu/metrics/mia.py",
        "        member, non_member = member[fit_m], non_member[fit_n]",
        "        member, non_member = member, non_member",
        T_METRICS,
        "each attack is fitted on the samples it is then validated on",
    ),
    _m(
        "validity-split-overlaps",
        "pbu/metrics/mia.py",
        "out.append((np.sort(perm[k:]), np.sort(perm[:k])))",
        "out.append((np.sort(perm[k - 1 :]), np.sort(perm[:k])))",
        T_METRICS,
        "the validity split puts one sample on both sides",
    ),
    _m(
        "validity-bacc-true-negatives-inverted",
        "pbu/metrics/mia.py",
        "bacc, se = _bacc(score_m > 0, score_n <= 0)",
        "bacc, se = _bacc(score_m > 0, score_n > 0)",
        T_METRICS,
        "the balanced accuracy counts non-members called member as hits",
    ),
    _m(
        "validity-loss-attack-on-the-forget-class",
        "pbu/evaluation.py",
        'row.update(_validity("mia_loss", M.loss_attack_validity(rtr, rtr_y, rte, rte_y, seed)))',
        'row.update(_validity("mia_loss", M.loss_attack_validity(ftr, ftr_y, fte, fte_y, seed)))',
        "tests/unit/test_evaluate.py",
        "the loss attack's validity is measured on the forget class, where members may not exist",
    ),
    _m(
        "validity-bad-teaching-uses-ours",
        "pbu/evaluation.py",
        "M.entropy_svc_bad_teaching_attack(rtr, rte, fte, ftr, seed=seed, **svc),",
        "M.entropy_svc_attack(rtr, rte, ftr, seed=seed, **svc),",
        "tests/unit/test_evaluate.py",
        "the Bad-Teaching-sets attack (and its validity) is our attack under another name",
    ),
    _m(
        "at-chance-threshold-0.5",
        "pbu/report/forget_score.py",
        "return bool(bacc < AT_CHANCE_BACC or bacc - Z95 * se <= 0.5)",
        "return bool(bacc < 0.5 or bacc - Z95 * se < 0.5)",
        T_RFS,
        "an attack at exactly chance (balanced accuracy 0.5) counts as valid",
    ),
    _m(
        "c4-ignores-attack-validity",
        "pbu/report/claims.py",
        "        if chance:  # the verdict reads",
        "        if False:  # the verdict reads",
        T_RFS,
        "C4 rests on the MIA even when that attack is at chance",
    ),
    _m(
        "c4-forget-score-strata-mixed",
        "pbu/report/forget_score.py",
        "        x = d[strata == s]",
        "        x = d",
        T_RFS,
        "C4's bootstrap resamples the images of every class together, within each class's draw",
    ),
    _m(
        "c5-unmatched-forgetting-decides",
        "pbu/report/claims.py",
        "    if loose and not (part.verdict == DOES_NOT_HOLD and pair[0] in loose):",
        "    if loose and part.verdict != DOES_NOT_HOLD:",
        f"{T_CLAIMS}::test_c5_fisher_part_reads_no_effect_helps_hurts",
        "C5 reads a variant that keeps more A_Dr by forgetting less as the Fisher term hurting",
    ),
    _m(
        "c4-forget-score-units-lost",
        "pbu/report/claims.py",
        "            return self.models or (0, 0)",
        "            return 0, 0",
        T_RFS,
        "C4 on the forget score reports n_seeds = 0 and n_pairs = 0 instead of PBU's models",
    ),
]


@dataclass
class Outcome:
    """What happened to one mutation."""

    mutation: Mutation
    status: str  # "killed" | "survived" | "error"
    detail: str = ""
    seconds: float = 0.0


class SnippetError(ValueError):
    """A mutation's snippet is not in its file exactly once."""


def apply(root: Path, m: Mutation) -> str:
    """Apply ``m`` to the copy under ``root``; return the file's original text (to restore)."""
    path = root / m.path
    if not path.is_file():
        raise SnippetError(f"{m.name}: {m.path} does not exist")
    original = text = path.read_text()
    for old, new in m.edits:
        n = text.count(old)
        if n != 1:
            raise SnippetError(
                f"{m.name}: the snippet {old!r} occurs {n} times in {m.path} (must be exactly once)"
            )
        text = text.replace(old, new)
    path.write_text(text)
    return original


def repo_files(src: Path) -> list[str]:
    """Files git tracks or would track (untracked, not ignored); every file outside git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=src,
            capture_output=True,
            check=True,
        )
        return [f for f in out.stdout.decode().split("\0") if f and (src / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "results", "data", ".snakemake", "__pycache__"}
        return [
            str(p.relative_to(src))
            for p in src.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(src).parts)
        ]


def copy_repo(src: Path, dst: Path) -> None:
    for f in repo_files(src):
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / f, dst / f)


Runner = Callable[[Path, Sequence[str]], tuple[str, str]]


def pytest_runner(timeout: float) -> Runner:
    """Run ``pytest -x -m "not slow"`` on ``tests`` inside ``root``: ("passed" | "failed" |
    "timeout" | "error", the output's tail)."""

    def run(root: Path, tests: Sequence[str]) -> tuple[str, str]:
        env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            *tests,
        ]
        try:
            proc = subprocess.run(
                cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return "timeout", f"no result after {timeout:.0f} s"
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        status = {0: "passed", 1: "failed"}.get(proc.returncode, "error")
        return status, "\n".join(tail)

    return run


def _check_import(root: Path) -> None:
    """The copy's ``pbu`` is the one a test run there imports (else nothing would be mutated)."""
    if not (root / "pbu" / "__init__.py").exists():
        return  # not this project (the script's own tests use a toy repository)
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run(
        [sys.executable, "-c", "import pbu; print(pbu.__file__)"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the mutated copy's tests would import pbu from {out}, not {root}")


def _one(root: Path, m: Mutation, runner: Runner) -> Outcome:
    t0 = time.perf_counter()
    try:
        original = apply(root, m)
    except SnippetError as err:
        return Outcome(m, "error", str(err))
    try:
        status, tail = runner(root, m.tests)
    finally:
        (root / m.path).write_text(original)
    seconds = time.perf_counter() - t0
    if status in ("failed", "timeout"):
        return Outcome(m, "killed", status, seconds)
    if status == "passed":
        return Outcome(m, "survived", f"{', '.join(m.tests)} passed with the bug", seconds)
    return Outcome(m, "error", f"pytest could not run:\n{tail}", seconds)


def check(
    mutations: Sequence[Mutation],
    src: Path = ROOT,
    *,
    runner: Runner | None = None,
    jobs: int = 1,
    timeout: float = 600.0,
    report: Callable[[str], None] = print,
) -> list[Outcome]:
    """Apply each mutation to a copy of ``src`` (``jobs`` copies at once) and run its tests."""
    runner = runner or pytest_runner(timeout)
    jobs = max(1, min(jobs, len(mutations)))
    with tempfile.TemporaryDirectory(prefix="pbu-mutations-") as tmp:
        copies = [Path(tmp) / f"copy{i}" for i in range(jobs)]
        for c in copies:
            c.mkdir()
            copy_repo(src, c)
        _check_import(copies[0])
        tests = sorted({t for m in mutations for t in m.tests})
        t0 = time.perf_counter()
        status, tail = runner(copies[0], tests)
        if status != "passed":
            raise RuntimeError(
                f"the tests fail (or cannot run) WITHOUT any mutation, so a kill "
                f"would mean nothing:\n{tail}"
            )
        report(
            f"baseline: {len(tests)} test paths pass unmutated ({time.perf_counter() - t0:.0f} s)"
        )
        free = list(copies)

        def work(m: Mutation) -> Outcome:
            root = free.pop()
            try:
                out = _one(root, m, runner)
            finally:
                free.append(root)
            report(f"{out.status:8s} {m.name:34s} {out.seconds:5.0f} s  {m.what}")
            return out

        with ThreadPoolExecutor(jobs) as pool:
            return list(pool.map(work, mutations))


def stale_snippets(mutations: Iterable[Mutation], src: Path = ROOT) -> list[str]:
    """An error line for every mutation that does not apply to ``src`` as it is (read only)."""
    errors = []
    for m in mutations:
        path = src / m.path
        text = path.read_text() if path.is_file() else None
        if text is None:
            errors.append(f"{m.name}: {m.path} does not exist")
            continue
        for old, new in m.edits:
            if text.count(old) != 1:
                errors.append(
                    f"{m.name}: the snippet {old!r} occurs {text.count(old)} times in "
                    f"{m.path} (must be exactly once)"
                )
            text = text.replace(old, new)
    return errors


def select(mutations: Iterable[Mutation], pattern: str | None) -> list[Mutation]:
    """The mutations whose name contains ``pattern`` (all when None)."""
    return [m for m in mutations if pattern is None or pattern in m.name]


def exit_status(outcomes: Sequence[Outcome]) -> int:
    """0 when every mutation was killed, else 1."""
    return 0 if all(o.status == "killed" for o in outcomes) else 1


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument(
        "--snippets",
        action="store_true",
        help="only check that every snippet occurs exactly once (no tests run)",
    )
    ap.add_argument("-k", dest="pattern", help="only the mutations whose name contains this")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="mutations run at once (2)")
    ap.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds one pytest run may take before it counts as killed (600)",
    )
    args = ap.parse_args(argv)
    chosen = select(MUTATIONS, args.pattern)
    if args.list:
        for m in chosen:
            print(f"{m.name:34s} {m.path:28s} {' '.join(m.tests)}\n{'':34s} {m.what}")
        return 0
    if not chosen:
        print(f"no mutation matches {args.pattern!r}", file=sys.stderr)
        return 2
    if args.snippets:
        errors = stale_snippets(chosen)
        print("\n".join(errors) or f"all {len(chosen)} mutations apply")
        return 1 if errors else 0
    t0 = time.perf_counter()
    outcomes = check(
        chosen, jobs=args.jobs, timeout=args.timeout, report=lambda line: print(line, flush=True)
    )
    bad = [o for o in outcomes if o.status != "killed"]
    killed = len(outcomes) - len(bad)
    print(
        f"\n{killed} of {len(outcomes)} mutations killed, "
        f"{sum(o.status == 'survived' for o in outcomes)} survived, "
        f"{sum(o.status == 'error' for o in outcomes)} errors "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    for o in bad:
        print(
            f"\n{o.status.upper()}: {o.mutation.name} ({o.mutation.path}): "
            f"{o.mutation.what}\n{o.detail}"
        )
    return exit_status(outcomes)


if __name__ == "__main__":
    sys.exit(main())
