"""The forget-score stage: every method's per-example forgetting score against retraining.

Reads the per-example confidences the evaluation saved (``confidences.npz`` of every group, and
the ceiling's extra oracles, :func:`read_confidences`); never runs a model. Per (dataset, arch,
forget class) the N oracles of the run's seeds are the reference, and each of these is compared
with them by :func:`pbu.metrics.epsilon` (per image) and scored
(:func:`pbu.metrics.forgetting_score`):

- every method: its N unlearned models (one per seed, each from that seed's original model);
- ``ceiling``: N further oracles from other seeds (config ``evaluation.forget_score.
  ceiling_seeds``): what a perfect method, retraining itself, scores with N models;
- ``floor``: the N original models (nothing forgotten).

Written (``aggregate/``): ``forget_score.csv`` (per class and pooled over classes, ``forget`` =
``all``), ``forget_score_images.csv`` (per image) and ``forget_score_runs.csv`` (per model: its
median confidence and offset from the oracles). docs/forget-score.md describes every column.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pbu import layout
from pbu.io import atomic_write, write_json

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
ORIGINAL, ORACLE = "original", layout.ORACLE
CEILING, FLOOR = "ceiling", "floor"
ABOUT = (
    "logit-scaled confidence of the true class, log p_y - log sum_{k != y} p_k (float64, "
    "pbu.metrics.logit_confidence), on the forget class's training images; acc_retain_test in %"
)


# ------------------------------------------------------------------------------ the files


@dataclass
class Confidences:
    """One confidences file: per model (row) its name, seed, per-image confidences and A_Dr.

    ``index``: the positions of the forget class's training images in the prepared dataset's
    training split, the same order as the columns of ``confidence``."""

    model: list[str]
    seed: list[int]
    confidence: np.ndarray  # float64 [models, images]
    acc_retain_test: np.ndarray  # float64 [models], %
    index: np.ndarray  # int64 [images]
    forget: int

    def __post_init__(self) -> None:
        self.confidence = np.asarray(self.confidence, dtype=np.float64)
        self.acc_retain_test = np.asarray(self.acc_retain_test, dtype=np.float64)
        self.index = np.asarray(self.index, dtype=np.int64)
        rows, cols = self.confidence.shape
        if not (len(self.model) == len(self.seed) == len(self.acc_retain_test) == rows):
            raise ValueError(
                f"confidences: {rows} rows of values but {len(self.model)} names, "
                f"{len(self.seed)} seeds, {len(self.acc_retain_test)} accuracies"
            )
        if len(self.index) != cols:
            raise ValueError(f"confidences: {cols} images but {len(self.index)} indices")


def write_confidences(path: PathLike, conf: Confidences) -> None:
    """Write ``conf`` atomically as a NumPy ``.npz`` (no pickles: strings are unicode arrays)."""

    def dump(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez adds no ".npz" to the name
            np.savez(
                fh,
                model=np.array(conf.model, dtype=str),
                seed=np.array(conf.seed, dtype=np.int64),
                confidence=conf.confidence,
                acc_retain_test=conf.acc_retain_test,
                index=conf.index,
                forget=np.int64(conf.forget),
                about=np.array(ABOUT),
            )

    atomic_write(path, dump)


def read_confidences(path: PathLike) -> Confidences:
    """Read a file of :func:`write_confidences`."""
    with np.load(path, allow_pickle=False) as z:
        return Confidences(
            model=[str(m) for m in z["model"]],
            seed=[int(s) for s in z["seed"]],
            confidence=z["confidence"],
            acc_retain_test=z["acc_retain_test"],
            index=z["index"],
            forget=int(z["forget"]),
        )


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class ForgetScoreSettings:
    """The score's parameters (the challenge's values by default, ``pbu.metrics.forget_score``)
    and the bootstrap of its CI over images."""

    delta: float = 1e-5
    eps_cap: float = 50.0
    thresholds_per_unit: int = 100
    double_threshold: bool = True
    bootstrap: int = 1000
    seed: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ForgetScoreSettings:
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(
                f"unknown forget-score key(s) {', '.join(bad)}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**d)


# ------------------------------------------------------------------------------ one comparison


@dataclass
class Sets:
    """The models of one (dataset, arch, forget class): name -> seed -> (confidences, A_Dr)."""

    index: np.ndarray
    models: dict[str, dict[int, tuple[np.ndarray, float]]] = field(default_factory=dict)

    def add(self, name: str, seed: int, conf: np.ndarray, acc: float, where: str) -> None:
        seeds = self.models.setdefault(name, {})
        if seed in seeds:
            raise ValueError(f"{where}: a second {name!r} model of seed {seed}")
        seeds[seed] = (conf, acc)

    def matrix(self, name: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(seeds, confidences [N, images], A_Dr [N]) of one name, by seed."""
        seeds = sorted(self.models[name])
        rows = [self.models[name][s] for s in seeds]
        return seeds, np.stack([r[0] for r in rows]), np.array([r[1] for r in rows])


def gather(
    group_files: Sequence[PathLike], ceiling_files: Sequence[PathLike] = ()
) -> dict[tuple[str, str, int], Sets]:
    """Every confidences file, by (dataset, arch, forget class): the group files' models under
    their names, the ceiling files' oracles under ``ceiling``. Files of one class must hold
    the same images in the same order (their ``index``)."""
    out: dict[tuple[str, str, int], Sets] = {}
    for path, ceiling in [(p, False) for p in group_files] + [(p, True) for p in ceiling_files]:
        name = "ceiling_confidences" if ceiling else "confidences"
        found = layout.parse(path, name).wildcards
        conf = read_confidences(path)
        key = (found["dataset"], found["arch"], int(found["forget"]))
        if conf.forget != key[2]:
            raise ValueError(f"{path}: holds class {conf.forget}, its folder says {key[2]}")
        sets = out.setdefault(key, Sets(conf.index))
        if not np.array_equal(sets.index, conf.index):
            raise ValueError(
                f"{path}: its forget-class images differ from the other files' of class "
                f"{key[2]} (the prepared dataset changed between runs?)"
            )
        for i, model in enumerate(conf.model):
            if ceiling and model != ORACLE:
                raise ValueError(f"{path}: a ceiling file holds oracles only, found {model!r}")
            label = CEILING if ceiling else model
            sets.add(label, conf.seed[i], conf.confidence[i], conf.acc_retain_test[i], str(path))
    return out


def _bootstrap_ci(
    points: np.ndarray, strata: np.ndarray, reps: int, seed: int
) -> tuple[float, float]:
    """95 % percentile CI of the mean of ``points`` over images, resampled within each stratum
    (forget class)."""
    if reps <= 0 or len(points) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.zeros(reps)
    for s in np.unique(strata):
        p = points[strata == s]
        draws = rng.integers(0, len(p), size=(reps, len(p)))
        means += p[draws].sum(axis=1)
    means /= len(points)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass
class Comparison:
    """One set of models against the oracles, per image."""

    kind: str  # method | ceiling | floor
    n_models: int
    n_reference: int
    eps: np.ndarray
    peaky: np.ndarray
    points: np.ndarray
    offset: np.ndarray  # (median - oracles' median) / oracles' sd, per image
    median_conf: np.ndarray
    acc: float  # mean A_Dr of the compared models
    acc_reference: float


def compare(
    x: np.ndarray,
    acc_x: np.ndarray,
    ref: np.ndarray,
    acc_ref: np.ndarray,
    kind: str,
    settings: ForgetScoreSettings,
) -> Comparison:
    """``x`` ``[N, images]`` against the oracles ``ref`` ``[N, images]``."""
    from pbu.metrics.forget_score import bucket_points, epsilon, offsets

    eps, peaky = epsilon(
        x,
        ref,
        delta=settings.delta,
        cap=settings.eps_cap,
        thresholds_per_unit=settings.thresholds_per_unit,
        double_threshold=settings.double_threshold,
    )
    n = min(len(x), len(ref))
    return Comparison(
        kind,
        len(x),
        len(ref),
        eps,
        peaky,
        bucket_points(eps, n),
        offsets(x, ref),
        np.median(x, axis=0),
        float(np.mean(acc_x)),
        float(np.mean(acc_ref)),
    )


#: Within this many oracle sds of the oracles' median (the median over images), a method
#: leaves the class where retraining does.
WITHIN_SD = 1.0


def direction(offset_sd: float) -> str:
    """Where a method leaves the class, from its median standardised offset: more confident
    than retraining (under-forgetting), less (over-forgetting), or within one oracle sd."""
    if abs(offset_sd) < WITHIN_SD:
        return "within retraining's spread"
    return "under-forgetting" if offset_sd > 0 else "over-forgetting"


def _summary(parts: Sequence[Comparison], classes: Sequence[int], s: ForgetScoreSettings) -> dict:
    """The numbers of one table row from one or more classes' comparisons (pooled over images)."""
    from pbu.metrics.forget_score import max_epsilon

    points = np.concatenate([c.points for c in parts])
    eps = np.concatenate([c.eps for c in parts])
    offset = np.concatenate([c.offset for c in parts])
    strata = np.concatenate([np.full(len(c.points), k) for c, k in zip(parts, classes)])
    score = float(points.mean())
    lo, hi = _bootstrap_ci(points, strata, s.bootstrap, s.seed)
    acc = float(np.mean([c.acc for c in parts]))
    acc_ref = float(np.mean([c.acc_reference for c in parts]))
    signed = float(np.median(offset))
    n = min(min(c.n_models, c.n_reference) for c in parts)
    return {
        "kind": parts[0].kind,
        "n_models": min(c.n_models for c in parts),
        "n_oracles": min(c.n_reference for c in parts),
        "n_images": len(points),
        "max_eps": max_epsilon(n),
        "score": score,
        "score_ci_low": lo,
        "score_ci_high": hi,
        "utility_score": score * acc / acc_ref if acc_ref > 0 else math.nan,
        "acc_retain_test": acc,
        "oracle_acc_retain_test": acc_ref,
        "eps_median": float(np.median(eps)),
        "eps_cap_share": float(np.mean(eps >= s.eps_cap)),
        "peaky_share": float(np.mean(np.concatenate([c.peaky for c in parts]))),
        "offset_sd_median": float(np.median(np.abs(offset))),
        "offset_sd_signed_median": signed,
        "direction": direction(signed),
        "conf_median": float(np.median(np.concatenate([c.median_conf for c in parts]))),
    }


# ------------------------------------------------------------------------------ the stage


def score_sets(
    sets: Sets, key: tuple[str, str, int], settings: ForgetScoreSettings
) -> tuple[dict[str, Comparison], list[dict[str, Any]]]:
    """Every comparison of one class (methods, ceiling, floor) and the per-model rows."""
    dataset, arch, forget = key
    if ORACLE not in sets.models:
        raise ValueError(f"{dataset}/{arch} class {forget}: no oracle confidences")
    ref_seeds, ref, acc_ref = sets.matrix(ORACLE)
    if len(ref_seeds) < 2:
        raise ValueError(
            f"{dataset}/{arch} class {forget}: the forget score needs at least 2 seeds, got "
            f"{len(ref_seeds)}"
        )
    comparisons: dict[str, Comparison] = {}
    runs: list[dict[str, Any]] = []
    ref_median, ref_sd = np.median(ref, axis=0), ref.std(axis=0, ddof=1)
    for name in sorted(sets.models):
        seeds, x, acc = sets.matrix(name)
        if name != ORACLE:
            if name != CEILING and seeds != ref_seeds:
                log.warning(
                    "%s/%s class %d: %s has seeds %s, the oracles %s",
                    dataset,
                    arch,
                    forget,
                    name,
                    seeds,
                    ref_seeds,
                )
            kind = CEILING if name == CEILING else FLOOR if name == ORIGINAL else "method"
            label = FLOOR if name == ORIGINAL else name
            comparisons[label] = compare(x, acc, ref, acc_ref, kind, settings)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (x - ref_median) / ref_sd
        for seed, row, zr in zip(seeds, x, z):
            runs.append(
                {
                    "dataset": dataset,
                    "arch": arch,
                    "seed": seed,
                    "forget": forget,
                    "method": ORACLE if name == CEILING else name,
                    "ceiling": name == CEILING,
                    "conf_median": float(np.median(row)),
                    "conf_offset_sd_median": float(np.median(zr)),
                }
            )
    return comparisons, runs


def forget_scores(
    group_files: Sequence[PathLike],
    ceiling_files: Sequence[PathLike] = (),
    settings: ForgetScoreSettings | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(table rows, per-image rows, per-model rows) for every class of the files."""
    settings = settings or ForgetScoreSettings()
    table: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    by_setting: dict[tuple[str, str], dict[str, list[tuple[int, Comparison]]]] = {}
    for key, sets in sorted(gather(group_files, ceiling_files).items()):
        comparisons, model_rows = score_sets(sets, key, settings)
        runs += model_rows
        dataset, arch, forget = key
        for name, c in comparisons.items():
            by_setting.setdefault((dataset, arch), {}).setdefault(name, []).append((forget, c))
            row = {"dataset": dataset, "arch": arch, "forget": forget, "method": name}
            table.append(row | _summary([c], [forget], settings))
            for i in range(len(c.eps)):
                images.append(
                    {
                        "dataset": dataset,
                        "arch": arch,
                        "forget": forget,
                        "method": name,
                        "image": int(sets.index[i]),
                        "eps": float(c.eps[i]),
                        "points": float(c.points[i]),
                        "peaky": bool(c.peaky[i]),
                        "offset_sd": float(c.offset[i]),
                        "conf_median": float(c.median_conf[i]),
                    }
                )
    for (dataset, arch), per_name in sorted(by_setting.items()):
        for name, parts in per_name.items():
            if len(parts) < 2:
                continue  # one class: its row is the pooled row
            classes, comps = zip(*parts)
            row = {"dataset": dataset, "arch": arch, "forget": "all", "method": name}
            table.append(row | _summary(comps, classes, settings))
    return table, images, runs


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)
    return path


def _record(started_at: float, t0: float) -> dict[str, Any]:
    """The job's own time, CPU seconds, peak memory and span (torch-free; as
    :func:`pbu.jobs.common.resources` records them for the compute jobs)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "time_s": time.perf_counter() - t0,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "fork_server": os.environ.get("PBU_FORK_WORKER") == "1",
        "started_at": started_at,
        "ended_at": time.time(),
    }


def forget_score(
    out_dir: PathLike,
    *,
    confidences: Sequence[PathLike],
    ceiling: Sequence[PathLike] = (),
    settings: ForgetScoreSettings | Mapping[str, Any] | None = None,
    started_at: float | None = None,
) -> dict[str, Path]:
    """The stage: score every method of the ``confidences`` files (one per group) against
    the oracles, with the ``ceiling`` files' extra oracles as the ceiling; write the three
    tables and the job's record (settings, time, CPU) into ``out_dir`` (the layout's
    ``aggregate/``) and return their paths."""
    began, t0 = time.time() if started_at is None else started_at, time.perf_counter()
    if isinstance(settings, Mapping):
        settings = ForgetScoreSettings.from_dict(settings)
    settings = settings or ForgetScoreSettings()
    table, images, runs = forget_scores(confidences, ceiling, settings)
    if not table:
        raise ValueError("no confidences files to score")
    out = Path(out_dir)
    paths = {
        name: _write_csv(out / Path(layout.FILES[name]).name, rows)
        for name, rows in (
            ("forget_score_csv", table),
            ("forget_score_images_csv", images),
            ("forget_score_runs_csv", runs),
        )
    }
    paths["forget_score_info"] = out / Path(layout.FILES["forget_score_info"]).name
    write_json(
        paths["forget_score_info"],
        {
            "settings": asdict(settings),
            "confidences": len(confidences),
            "ceiling": len(ceiling),
            **_record(began, t0),
        },
    )
    log.info("forget score: %d rows, %d images, %d models", len(table), len(images), len(runs))
    return paths
