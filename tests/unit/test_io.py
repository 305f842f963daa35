"""Atomic writes: a write that fails midway leaves the final name as it was, and no debris."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pbu.io import atomic_write, write_json


class Boom(RuntimeError):
    pass


def _failing_writer(final: Path, seen: dict):
    """Writes half a file, looks at the final name meanwhile, then raises."""

    def write(tmp: str) -> None:
        seen["tmp"] = Path(tmp)
        with open(tmp, "w") as fh:
            fh.write('{"half": ')
            fh.flush()
            seen["final_during_write"] = final.read_bytes() if final.exists() else None
        raise Boom("disk full, say")

    return write


def _debris(folder: Path, final: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p != final)


def test_a_failed_write_leaves_no_file_and_no_temporary(tmp_path):
    final = tmp_path / "sub" / "metrics.json"
    seen: dict = {}
    with pytest.raises(Boom):
        atomic_write(final, _failing_writer(final, seen))
    assert seen["tmp"] != final, "atomic_write wrote under the final name, not a temporary one"
    assert seen["tmp"].parent == final.parent, "the temporary must sit beside the final file"
    assert not final.exists(), f"a failed write left {final.name}: {final.read_text()!r}"
    assert _debris(final.parent, final) == [], (
        f"a failed write left temporary files {_debris(final.parent, final)}"
    )


def test_a_failed_overwrite_leaves_the_old_file_untouched(tmp_path):
    final = tmp_path / "metrics.json"
    final.write_text('{"old": 1}\n')
    seen: dict = {}
    with pytest.raises(Boom):
        atomic_write(final, _failing_writer(final, seen))
    assert seen["final_during_write"] == b'{"old": 1}\n', (
        f"while the new content was being written, {final.name} held "
        f"{seen['final_during_write']!r}: the write is not going to a temporary name"
    )
    assert final.exists() and final.read_text() == '{"old": 1}\n', (
        f"a failed overwrite changed {final.name}: "
        f"{final.read_text() if final.exists() else 'deleted'!r}"
    )
    assert _debris(tmp_path, final) == [], (
        f"a failed write left temporary files {_debris(tmp_path, final)}"
    )


def test_a_successful_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    final = tmp_path / "metrics.json"
    final.write_text("old")
    write_json(final, {"acc": 1.5, "path": Path("a/b")})
    assert json.loads(final.read_text()) == {"acc": 1.5, "path": "a/b"}
    assert _debris(tmp_path, final) == []


def test_write_json_of_an_unserialisable_value_keeps_the_old_file(tmp_path):
    """json.dump fails after part of the document is written."""
    final = tmp_path / "info.json"
    final.write_text('{"old": 1}\n')
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(final, {"a": list(range(1000)), "z": object()})
    assert final.read_text() == '{"old": 1}\n', "a failed write_json changed the file"
    assert _debris(tmp_path, final) == [], (
        f"a failed write_json left temporary files {_debris(tmp_path, final)}"
    )
