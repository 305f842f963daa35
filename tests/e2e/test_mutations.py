"""The mutation script's real runner (a pytest subprocess per mutation) on a toy repository."""

from __future__ import annotations

import pytest

from ..unit.test_mutations import m, mut  # the toy repository: tests/conftest.py


@pytest.mark.slow
def test_the_pytest_runner_on_a_toy_repository(toy):
    """The real runner (a pytest subprocess per mutation): a failing test kills, a passing one
    lets survive, and code that cannot even be collected is an error of the list, not a kill."""
    out = mut.check(
        [
            m("kill", "return 2 * x", "return 3 * x"),
            m("untested", "return x / 2", "return x / 3"),
            m("broken", "return 2 * x", "return ("),
        ],
        toy,
        report=lambda _: None,
        timeout=120,
    )
    assert [o.status for o in out] == ["killed", "survived", "error"], [
        (o.mutation.name, o.status, o.detail) for o in out
    ]
