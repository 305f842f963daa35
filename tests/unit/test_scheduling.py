"""pbu.scheduling: the scheduler's re-evaluation timers are cancelled, nothing else is, and the
workflow wires the work-around in (profile value and both hooks)."""

from __future__ import annotations

import inspect
import re
import threading
from pathlib import Path

import yaml

from pbu.scheduling import cancel_reevaluation_timers

ROOT = Path(__file__).resolve().parents[2]


class _FakeScheduler:
    """Starts its timer the way Snakemake's JobScheduler does (a lambda in a method of the same
    name), so the callback's ``__qualname__`` carries the method's name."""

    def __init__(self):
        self.woken = threading.Event()

    def _schedule_reevalutation(self, delay: float) -> threading.Timer:
        timer = threading.Timer(delay, lambda: self.woken.set())
        timer.start()
        return timer


def test_only_the_schedulers_timers_are_cancelled():
    scheduler = _FakeScheduler()
    theirs = scheduler._schedule_reevalutation(30.0)
    other_fired = threading.Event()
    other = threading.Timer(0.2, other_fired.set)  # somebody else's timer: must still fire
    other.start()
    try:
        assert cancel_reevaluation_timers() == 1
        theirs.join(timeout=5)
        assert not theirs.is_alive()  # cancelled: the thread ended without waiting 30 s
        assert not scheduler.woken.is_set()  # and its callback never ran
        assert other_fired.wait(timeout=5)  # the unrelated timer was left alone
        assert cancel_reevaluation_timers() == 0  # nothing left to cancel
    finally:
        theirs.cancel()
        other.cancel()


def test_snakemake_still_starts_its_timers_where_we_look():
    """The work-around names Snakemake's method; an upgrade that renames it fails here, not by
    silently holding every run's exit for a timespan."""
    from snakemake.scheduling.job_scheduler import JobScheduler

    method = JobScheduler._schedule_reevalutation
    source = inspect.getsource(method)
    assert "threading.Timer" in source and "_open_jobs.release" in source
    assert "_schedule_reevalutation(" in inspect.getsource(JobScheduler.schedule)


def test_workflow_profile_sets_a_long_timespan_no_run_reaches():
    profile = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    value = profile["max-jobs-per-timespan"]
    m = re.fullmatch(r"(\d+)/(\d+)s", value)
    assert m, value
    assert int(m.group(1)) >= 10_000  # never binds: no job waits for the limiter
    assert int(m.group(2)) >= 10  # a tenth or less of the default's wake-ups


def test_both_hooks_cancel_the_timers():
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    for hook in ("onsuccess", "onerror"):
        body = re.search(rf"^{hook}:\n((?:    .*\n)+)", text, re.M)
        assert body and "cancel_reevaluation_timers()" in body.group(1), hook
