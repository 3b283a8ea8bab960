"""Atomic run directories and checksum manifests."""

from __future__ import annotations

import json

import pytest

from mechscope.errors import StoreError
from mechscope.store import RunStore, SuiteRecord, atomic_directory, verify_manifest


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


def _stored_run(store, run_id, *, metrics='{"m": 1.5}', status="completed"):
    """A minimal run directory as RunStore.save lays it out (no model: rows need none)."""
    import numpy as np

    with atomic_directory(store / run_id) as directory:
        header = {
            "run_id": run_id,
            "config": {"model": {"name": "m"}, "seed": 0},
            "status": status,
            "reason": "",
            "probes": ["p"],
            "timings": {"train_s": 1.0},
        }
        (directory / "experiment.json").write_text(json.dumps(header))
        (directory / "trained").mkdir()
        np.savez(directory / "trained" / "history.npz", loss=np.array([2.0, 0.5]))
        (directory / "probes" / "p").mkdir(parents=True)
        (directory / "probes" / "p" / "metrics.json").write_text(metrics)


def test_rows_carry_config_training_and_probe_columns(tmp_path):
    _stored_run(tmp_path, "aaa")
    row = RunStore(tmp_path).read_row("aaa")
    assert row == {
        "run_id": "aaa",
        "status": "completed",
        "reason": "",
        "model.name": "m",
        "seed": 0,
        "probes": "",
        "train.loss": 0.5,
        "p.m": 1.5,
        "time.train_s": 1.0,
    }


@pytest.mark.parametrize("damage", ['{"m": {"nested": 1}}', '["m"]', '{"m": "1.5"}'])
def test_a_well_checksummed_but_invalid_file_isolates_its_run(tmp_path, damage):
    _stored_run(tmp_path, "good")
    _stored_run(tmp_path, "bad", metrics=damage)
    store = RunStore(tmp_path)
    with pytest.warns(UserWarning, match=r"bad/probes/p/metrics.json: invalid"):
        table = store.runs_table()
    assert list(table["run_id"]) == ["good"]


def test_a_manifest_of_the_wrong_shape_is_a_store_error(tmp_path):
    _stored_run(tmp_path, "run")
    (tmp_path / "run" / "manifest.json").write_text("[]")
    with pytest.raises(StoreError, match="manifest.json: invalid"):
        verify_manifest(tmp_path / "run")
    with pytest.warns(UserWarning, match="recomputing run"):
        assert not RunStore(tmp_path).is_complete("run")


def test_suite_records_written_by_two_writers_never_collide(tmp_path):
    import threading

    store = RunStore(tmp_path)
    errors = []

    def write(seed):
        for _ in range(200):
            try:
                store.write_suite_record(SuiteRecord(name="s", runs=[], seeds=[seed]))
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                errors.append(error)

    threads = [threading.Thread(target=write, args=(s,)) for s in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    (record,) = store.suite_records()
    assert record.seeds in ([1], [2])
    assert not list((tmp_path / "suites").glob(".*tmp*")), "a temporary file was left behind"
