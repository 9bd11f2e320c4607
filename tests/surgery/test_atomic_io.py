"""Every file the project writes is whole or absent: a full disk leaves no truncated file, the error
names the file and the cause, and the rerun works."""

import errno
import json
import os

import numpy as np
import pytest

from surgery.atomic_io import FileWriteError, atomic_path, atomic_write, write_json_atomic


def full_disk_after(monkeypatch, n_bytes: int):
    """os.write writes `n_bytes` in all, then fails with ENOSPC (errno 28), like a disk filling up."""
    real_write = os.write
    left = [n_bytes]

    def write(fd, data):
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(data[: left[0]]))
        left[0] -= n
        return n
    monkeypatch.setattr(os, "write", write)


def test_full_disk_leaves_no_truncated_file_and_names_it(tmp_path, monkeypatch):
    path = tmp_path / "values.json"
    full_disk_after(monkeypatch, 10)
    with pytest.raises(FileWriteError) as caught:
        write_json_atomic(path, {"schema": "model-surgery.values", "means": list(range(100))})
    assert str(caught.value) == f"could not write {path}: No space left on device (errno 28)"
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert list(tmp_path.iterdir()) == []  # neither a truncated values.json nor a temporary file
    monkeypatch.undo()
    write_json_atomic(path, {"ok": True})  # the rerun works: nothing "already exists"
    assert json.loads(path.read_text()) == {"ok": True}


def test_a_failed_replacement_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "plan.json"
    atomic_write(path, "old contents")
    full_disk_after(monkeypatch, 3)
    with pytest.raises(OSError, match="plan.json"):
        atomic_write(path, "new contents that do not fit")
    assert path.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_a_writer_that_needs_a_file_name_is_atomic_too(tmp_path):
    path = tmp_path / "figure.png"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a fig")
            raise RuntimeError("plotting failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"whole figure")
    assert path.read_bytes() == b"whole figure"


def test_new_files_get_the_usual_permissions_and_replaced_ones_keep_theirs(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        os.chmod(tmp_path / "a.json", 0o600)
        atomic_write(tmp_path / "a.json", "[]")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)


def test_values_and_plans_go_through_the_atomic_writer(tiny_llama, tmp_path, monkeypatch):
    """The fault of issue 19: Values.save on a full disk left a truncated JSON the rerun refused."""
    from probes.values import Values, values_from_arrays
    from pruning.plan import PruningPlan, model_identity

    values = values_from_arrays(tiny_llama.components.heads, np.arange(18.0))
    plan = PruningPlan(model_identity(tiny_llama), layers=[1])
    for obj, name in ((values, "values.json"), (plan, "plan.json")):
        full_disk_after(monkeypatch, 64)
        with pytest.raises(OSError, match=f"could not write .*{name}: No space left on device"):
            obj.save(tmp_path / name)
        assert not (tmp_path / name).exists()
        monkeypatch.undo()
        obj.save(tmp_path / name)
    assert Values.load(tmp_path / "values.json").means.tolist() == list(range(18))
    assert PruningPlan.load(tmp_path / "plan.json").layers == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json", "values.json"]
