"""One job, several unlearning methods: every method of a (dataset, arch, seed, forget) group in
one process (config ``unlearn_batch: true``).

A run of thousands of one-second unlearning jobs pays, per job, Snakemake's scheduling and a
process (or a fork-server worker) besides the work. This job calls :func:`pbu.jobs.unlearn.unlearn`
once per method, exactly as the per-method job does: each call loads the data and θ* afresh,
seeds itself and writes the method's own folder (model, history, record), so the files are the
same as those of separate jobs (tested: ``tests/unit/test_unlearn_batch.py``). Each method's
record then states its own CPU seconds and span (the process's counters are shared), with
``batch`` saying which job ran it.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pbu.errors import UsageError
from pbu.io import write_json
from pbu.jobs.unlearn import unlearn

PathLike = str | os.PathLike

#: The per-method keys a batch entry may hold: the arguments of :func:`unlearn` that differ
#: between the methods of one group.
ENTRY_KEYS = (
    "method",
    "hparams",
    "out_model",
    "out_history",
    "out_info",
    "retain_subset",
    "fisher",
    "hparams_from",
    "tuned",
    "holdout",
    "variant",
    "overrides",
    "monitor_every",
    "monitor_retain",
)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def unlearn_batch(
    data: PathLike,
    *,
    model: PathLike,
    forget: int,
    seed: int,
    entries: Sequence[Mapping[str, Any]],
    device: str = "auto",
    memory_format: str = "channels_last",
    started_at: float | None = None,
) -> list[dict[str, Any]]:
    """Run every entry (a method with its hyperparameters and output paths, keys
    :data:`ENTRY_KEYS`) on the original checkpoint ``model``, one after the other; returns
    their records (each also in its ``out_info``)."""
    if not entries:
        raise UsageError("unlearn-batch: no methods given")
    for i, entry in enumerate(entries):
        bad = sorted(set(entry) - set(ENTRY_KEYS))
        if bad or "method" not in entry:
            raise UsageError(
                f"unlearn-batch entry {i}: unknown key(s) {', '.join(bad) or '-'} or no "
                f"method; allowed: {', '.join(ENTRY_KEYS)}"
            )
    names = [e.get("variant") or e["method"] for e in entries]
    records = []
    for i, entry in enumerate(entries):
        cpu0, t0 = _cpu_s(), time.time()
        rec = unlearn(
            data,
            model=model,
            forget=forget,
            seed=seed,
            device=device,
            memory_format=memory_format,
            started_at=started_at if i == 0 else t0,  # the first also paid the start-up
            **entry,
        )
        # The process's counters cover every method so far: state this method's own.
        rec["cpu_s"] = _cpu_s() - (0.0 if i == 0 else cpu0)
        rec["batch"] = {"position": i, "methods": names}
        write_json(entry["out_info"], rec)
        records.append(rec)
    return records
