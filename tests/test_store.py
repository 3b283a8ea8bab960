"""Atomic run directories and checksum manifests."""

from __future__ import annotations

import pytest

from mechscope.errors import StoreError
from mechscope.store import atomic_directory, verify_manifest


def test_atomic_directory_appears_complete_with_manifest(tmp_path):
    target = tmp_path / "run"
    with atomic_directory(target) as temporary:
        (temporary / "a.txt").write_text("alpha")
        (temporary / "sub").mkdir()
        (temporary / "sub" / "b.bin").write_bytes(b"\x00\x01")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "alpha"
    verify_manifest(target)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_failure_inside_block_leaves_nothing_and_keeps_old(tmp_path):
    target = tmp_path / "run"
    with atomic_directory(target) as temporary:
        (temporary / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as temporary:
        (temporary / "a.txt").write_text("new, half-written")
        raise RuntimeError("crash")
    assert (target / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_replaces_and_refuses_without_flag(tmp_path):
    target = tmp_path / "run"
    with atomic_directory(target) as temporary:
        (temporary / "a.txt").write_text("old")
    with pytest.raises(StoreError, match="already exists"), atomic_directory(target) as temporary:
        (temporary / "a.txt").write_text("new")
    with atomic_directory(target, overwrite=True) as temporary:
        (temporary / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    verify_manifest(target)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_manifest_detects_damage(tmp_path, damage):
    target = tmp_path / "run"
    with atomic_directory(target) as temporary:
        (temporary / "data.bin").write_bytes(bytes(range(200)))
    path = target / "data.bin"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[7] ^= 1
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    with pytest.raises(StoreError, match="data.bin"):
        verify_manifest(target)


def test_missing_manifest_is_an_error(tmp_path):
    (tmp_path / "x").write_text("1")
    with pytest.raises(StoreError, match="manifest"):
        verify_manifest(tmp_path)


def test_manifest_checked_below_one_subdirectory(tmp_path):
    with atomic_directory(tmp_path / "run") as directory:
        (directory / "trained").mkdir()
        (directory / "trained" / "model.bin").write_bytes(b"weights")
        (directory / "probes").mkdir()
        (directory / "probes" / "metrics.json").write_text("{}")
    run = tmp_path / "run"
    (run / "probes" / "metrics.json").write_text("{")  # damage outside "trained"
    verify_manifest(run, under="trained")
    with pytest.raises(StoreError, match="metrics.json"):
        verify_manifest(run)
    (run / "trained" / "model.bin").write_bytes(b"weight")
    with pytest.raises(StoreError, match="model.bin"):
        verify_manifest(run, under="trained")
    with pytest.raises(StoreError, match="no file under 'figures'"):
        verify_manifest(run, under="figures")
