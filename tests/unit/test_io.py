"""Atomic writes: a write that fails midway leaves the final name as it was, and no debris."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import pbu.io as pbu_io
from pbu.io import atomic_write, current_umask, write_json


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


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def umask(request):
    """Run the test under a given umask, restoring the old one afterwards."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_written_files_get_the_mode_open_would_give_them(tmp_path, umask):
    """0644 under umask 022, 0664 under 002: a lab's shared results stay readable (not 0600)."""
    import torch

    from pbu.checkpoint import save_tensors

    plain = tmp_path / "plain.txt"
    with open(plain, "w") as fh:  # what open() gives: the reference
        fh.write("x")
    want = stat.S_IMODE(plain.stat().st_mode)
    assert want == 0o666 & ~umask
    write_json(tmp_path / "metrics.json", {"a": 1})
    atomic_write(tmp_path / "table.csv", lambda tmp: Path(tmp).write_text("a,b\n"))
    save_tensors(tmp_path / "model.pt", {"w": torch.zeros(2)})
    for name in ("metrics.json", "table.csv", "model.pt"):
        got = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert got == want, f"{name}: mode {got:o}, open() gives {want:o} under umask {umask:o}"


def test_current_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert os.umask(umask) == umask, "reading the umask changed it"


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    """The rename is made durable: the folder's fsync comes after os.replace, on that folder."""
    events: list[tuple[str, str]] = []
    real_replace, real_fsync_dir = os.replace, pbu_io.fsync_dir

    def replace(src, dst):
        events.append(("replace", str(Path(dst).parent)))
        return real_replace(src, dst)

    def fsync_dir(folder):
        events.append(("fsync_dir", str(folder)))
        return real_fsync_dir(folder)

    monkeypatch.setattr(pbu_io.os, "replace", replace)
    monkeypatch.setattr(pbu_io, "fsync_dir", fsync_dir)
    write_json(tmp_path / "sub" / "metrics.json", {"a": 1})
    folder = str(tmp_path / "sub")
    assert events == [("replace", folder), ("fsync_dir", folder)], events


def test_fsync_dir_fsyncs_a_directory_descriptor(tmp_path, monkeypatch):
    synced: list[bool] = []
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(pbu_io.os, "fsync", fsync)
    pbu_io.fsync_dir(tmp_path)
    assert synced == [True]
