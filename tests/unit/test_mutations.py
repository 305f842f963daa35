"""The mutation script's bookkeeping, and its list against the code as it is now.

Bookkeeping runs on a toy repository with an in-process runner (no subprocess); one slow test
runs the real pytest runner on the toy repository.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TESTS, ROOT = HERE.parent, HERE.parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("pbu_mutations", TESTS / "mutations.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


mut = _load()


def in_process(root: Path, tests) -> tuple[str, str]:
    """Run the toy's check without a subprocess: ``double(3) == 6`` on the copy's calc.py."""
    ns: dict = {}
    exec((root / "calc.py").read_text(), ns)
    return ("passed", "") if ns["double"](3) == 6 else ("failed", "double(3) != 6")


def m(name: str, old: str, new: str):
    return mut.Mutation(name, "calc.py", ((old, new),), ("tests/test_calc.py",), name)


def test_killed_survived_and_error_are_told_apart_and_each_file_is_restored(toy):
    mutations = [
        m("kill", "return 2 * x", "return 3 * x"),
        m("no-op", "return 2 * x", "return 2 * x"),  # a "mutation" that changes nothing
        m("untested", "return x / 2", "return x / 3"),  # no test looks at half()
        m("missing", "return 4 * x", "return 5 * x"),
        m("ambiguous", "return", "return -1 *"),
    ]
    lines: list[str] = []
    out = mut.check(mutations, toy, runner=in_process, report=lines.append)
    got = {o.mutation.name: o.status for o in out}
    assert got == {
        "kill": "killed",
        "no-op": "survived",
        "untested": "survived",
        "missing": "error",
        "ambiguous": "error",
    }, got
    errors = {o.mutation.name: o.detail for o in out if o.status == "error"}
    assert "occurs 0 times" in errors["missing"] and "occurs 2 times" in errors["ambiguous"]
    assert lines[0].startswith("baseline:") and len(lines) == 1 + len(mutations)
    assert mut.exit_status(out) == 1
    assert mut.exit_status(out[:1]) == 0
    assert (toy / "calc.py").read_text().count("return 2 * x") == 1  # the source is untouched


def test_two_copies_at_once_restore_their_files(toy):
    mutations = [m(f"kill{i}", "return 2 * x", "return 3 * x") for i in range(3)]
    mutations.insert(2, m("no-op", "return 2 * x", "return 2 * x"))
    out = mut.check(mutations, toy, runner=in_process, jobs=2, report=lambda _: None)
    assert [o.status for o in out] == ["killed", "killed", "survived", "killed"]


def test_a_failing_baseline_stops_the_check(toy):
    (toy / "calc.py").write_text("def double(x):\n    return x\n")
    with pytest.raises(RuntimeError, match="WITHOUT any mutation"):
        mut.check(
            [m("kill", "return x", "return 3 * x")], toy, runner=in_process, report=lambda _: None
        )


def test_the_list_applies_to_the_code_as_it_is():
    """Every snippet of every mutation occurs exactly once now, so a refactor that moves one
    fails here (in the fast suite) instead of silently leaving that line unguarded."""
    assert mut.stale_snippets(mut.MUTATIONS) == []
    names = [x.name for x in mut.MUTATIONS]
    assert len(names) == len(set(names)) >= 15
    for x in mut.MUTATIONS:
        for t in x.tests:
            assert (ROOT / t.split("::")[0]).is_file(), f"{x.name}: no test file {t}"
        assert all(old != new for old, new in x.edits), f"{x.name} changes nothing"
    issue17 = {
        "pbu-fisher-zeroed",
        "evaluate-mia-members-swapped",
        "salun-access-full-train",
        "tracking-drops-mia",
        "atomic-write-in-place",
        "monitor-time-counted",
    }
    assert issue17 <= set(names)
