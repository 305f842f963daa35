"""A work-around for Snakemake's job-rate limiter, which spins the scheduler on many-job runs.

Snakemake 8.17+ always has a job-rate limiter (``--max-jobs-per-timespan``, default ``100/1s``).
At the end of every pass of its scheduling loop that still has jobs waiting for a core, the
scheduler starts a ``threading.Timer`` that wakes it again one timespan later, and every wake-up
is another pass that starts another timer. A job's finish is a wake-up too, so each finished job
adds one more timer chain that lives as long as jobs are waiting: by the end of the default run's
135 unlearn jobs the scheduler re-selected jobs ~100 times a second, each pass a thread, an
event loop and a ``stat`` of every waiting job's inputs. Profiled on the default run
(``python -m cProfile $(which snakemake) --cores 2``, on a loaded machine): 36,938 job
selections for 171 jobs. Snakemake's own process took 43 s of CPU from the 2 cores the jobs need
on the idle machine, 80 s on a loaded one, where the run lasts longer; with the setting below,
12 s (``benchmarks/bench_scheduler.py`` and benchmarks/README.md measure it side by side).

The workflow profile (``profiles/default/config.yaml``) therefore sets a timespan of 10 s with a
limit no run reaches (``max-jobs-per-timespan: 100000/10s``): the chains fire a tenth as often,
and since the limit never binds, no job ever waits for one (jobs are still scheduled the moment a
core frees up, by the finishing job's own wake-up). The timers are non-daemon threads, so the
last one would hold Snakemake's exit for up to a timespan; the ``onsuccess``/``onerror`` hooks
(``workflow/rules/common.smk``) cancel them with :func:`cancel_reevaluation_timers`.
"""

from __future__ import annotations

import threading

# The name Snakemake's scheduler gives the method that starts the timers (its own spelling).
_REEVALUATION = "_schedule_reevalutation"


def cancel_reevaluation_timers() -> int:
    """Cancel the scheduler's pending re-evaluation timers; return how many were pending.

    Only timers whose callback was made by Snakemake's ``JobScheduler._schedule_reevalutation``
    are touched (they would only wake a scheduler that has already finished); any other
    ``threading.Timer`` in the process is left alone.
    """
    cancelled = 0
    for thread in threading.enumerate():
        function = getattr(thread, "function", None)
        if (
            isinstance(thread, threading.Timer)
            and thread.is_alive()
            and _REEVALUATION in getattr(function, "__qualname__", "")
        ):
            thread.cancel()
            cancelled += 1
    return cancelled
