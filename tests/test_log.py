"""The HDF5 run log: roundtrip, self-description, reading while a writer runs, status, truncation."""

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from bioplaus.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bioplaus.config import Config
from bioplaus.log import EPOCH_SERIES, LAYER_SERIES, LogError, RunLog, read_attrs, read_run, read_runs

LAYERS = ["fc1", "fc2", "out"]
B = 6


def fake_epoch(epoch: int, rng: np.random.Generator, with_probe: bool):
    stats = {
        "epoch": epoch, "lr": 5e-4 * 0.25 ** (epoch > 2), "train_loss": rng.random(), "train_error": 100 * rng.random(),
        "seconds": rng.random(),
        "layers": {name: {"loss_pred": rng.random(), "loss_sim": rng.random(), "error_pred": 100 * rng.random(),
                          "weight_norm": rng.random(), "update_norm": rng.random(), "fa_angle": float("nan")}
                   for name in LAYERS[:-1]} | {"out": {"weight_norm": rng.random(), "update_norm": rng.random()}},
    }
    ev = {"test_loss": rng.random(), "test_error": 100 * rng.random(),
          "layers": {name: {"loss_pred": rng.random(), "loss_sim": rng.random(), "error_pred": 100 * rng.random()}
                     for name in LAYERS[:-1]}}
    probe = None
    if with_probe:
        probe = {"layers": {name: {"bp_angle": 90 * rng.random()} for name in LAYERS[:-1]},
                 "similarity": {name: rng.random((B, B)).astype(np.float32) for name in LAYERS[:-1]},
                 "target_similarity": np.eye(B, dtype=np.float32), "labels": np.arange(B)}
    return stats, ev, probe


def write_run(path, n_epochs=3, probe_every=2, seed=0):
    cfg = Config(variant="predsim-bpf", epochs=5, num_layers=2, num_hidden=32, probe_every=probe_every).resolve()
    log = RunLog.create(str(path), cfg, "cpu (test)", 1234)
    rng = np.random.default_rng(seed)
    written = []
    for e in range(1, n_epochs + 1):
        stats, ev, probe = fake_epoch(e, rng, probe_every and e % probe_every == 0)
        log.append_epoch(stats, ev, probe)
        written.append((stats, ev, probe))
    return cfg, log, written


def test_roundtrip_every_number(tmp_path):
    path = tmp_path / "run.h5"
    cfg, _, written = write_run(path)
    run = read_run(str(path))
    assert run.config == cfg
    assert run.attrs["status"] == "running" and run.attrs["parameters"] == 1234
    assert run.attrs["variant"] == "predsim-bpf" and run.attrs["format_version"] == 1
    assert run.attrs["epochs_planned"] == 5 and json.loads(run.attrs["config"])["beta"] == 0.01
    assert run.num_epochs == 3
    np.testing.assert_array_equal(run.epochs["epoch"], [1, 2, 3])
    for i, (stats, ev, probe) in enumerate(written):
        assert run.epochs["train_error"][i] == stats["train_error"]
        assert run.epochs["test_loss"][i] == ev["test_loss"]
        assert run.epochs["lr"][i] == stats["lr"]
        for name in ("fc1", "fc2"):
            lay = run.layers[name]
            assert lay["train_loss_sim"][i] == stats["layers"][name]["loss_sim"]
            assert lay["test_error_pred"][i] == ev["layers"][name]["error_pred"]
            assert np.isnan(lay["fa_angle"][i])
            if probe is None:
                assert np.isnan(lay["bp_angle"][i])
            else:
                assert lay["bp_angle"][i] == probe["layers"][name]["bp_angle"]
        assert np.isnan(run.layers["out"]["train_loss_pred"][i])
        assert run.layers["out"]["weight_norm"][i] == stats["layers"]["out"]["weight_norm"]
    # one probe snapshot (epoch 2) of each block
    np.testing.assert_array_equal(run.probe["epochs"], [2])
    assert run.probe["similarity"]["fc1"].shape == (1, B, B)
    np.testing.assert_array_equal(run.probe["similarity"]["fc2"][0], written[1][2]["similarity"]["fc2"])
    np.testing.assert_array_equal(run.probe["labels"], np.arange(B))
    assert [r.path for r in read_runs([str(path), str(path)])] == [str(path)] * 2


def test_every_dataset_has_units_and_description(tmp_path):
    path = tmp_path / "run.h5"
    write_run(path)
    seen = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                seen.append(name)
                assert obj.attrs["units"] in ("%", "nats", "s", "1", "degrees"), name
                assert len(obj.attrs["description"]) > 10, name
        f.visititems(visit)
        assert set(f["epochs"]) == set(EPOCH_SERIES)
        assert set(f["layers/fc1"]) == set(LAYER_SERIES)
        for key in ("format_version", "bioplaus_version", "variant", "model", "dataset", "seed", "status",
                    "config", "device", "created", "parameters", "epochs_planned", "message"):
            assert key in f.attrs, key
    assert "probe/similarity/fc1" in seen and "epochs/test_error" in seen


def test_status_transitions(tmp_path):
    path = tmp_path / "run.h5"
    _, log, _ = write_run(path, n_epochs=1)
    assert read_attrs(str(path))["status"] == "running"
    log.set_status("interrupted", "stopped by SIGINT after epoch 1")
    a = read_attrs(str(path))
    assert (a["status"], a["message"]) == ("interrupted", "stopped by SIGINT after epoch 1")
    log.set_status("running")
    log.set_status("completed")
    a = read_attrs(str(path))
    assert (a["status"], a["message"]) == ("completed", "")
    with pytest.raises(ValueError):
        log.set_status("finished")
    assert read_run(str(path)).num_epochs == 1  # status edits keep the data


def test_truncate_drops_last_epoch_and_its_probe(tmp_path):
    path = tmp_path / "run.h5"
    write_run(path, n_epochs=4, probe_every=2)
    log = RunLog.open_for_resume(str(path))
    log.truncate(3)
    run = read_run(str(path))
    assert run.num_epochs == 3
    assert all(len(v) == 3 for lay in run.layers.values() for v in lay.values())
    np.testing.assert_array_equal(run.probe["epochs"], [2])
    assert run.probe["similarity"]["fc1"].shape[0] == 1


def test_bad_logs_raise_one_sentence(tmp_path):
    with pytest.raises(LogError, match="no run log"):
        read_run(str(tmp_path / "missing.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(LogError, match="not a readable HDF5"):
        read_run(str(junk))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(LogError, match="not a bioplaus run log"):
        RunLog.open_for_resume(str(other))
    path = tmp_path / "run.h5"
    write_run(path, n_epochs=1)
    with pytest.raises(LogError, match="already exists"):
        RunLog.create(str(path), Config().resolve(), "cpu", 1)


def test_reader_in_same_process_between_epochs(tmp_path):
    path = tmp_path / "run.h5"
    _, log, _ = write_run(path, n_epochs=1, probe_every=0)
    rng = np.random.default_rng(5)
    for e in (2, 3):
        assert read_run(str(path)).num_epochs == e - 1  # the writer is between epochs
        with h5py.File(path, "r") as f:  # a plain h5py reader with default locking works too
            assert f["epochs/epoch"].shape == (e - 1,)
        log.append_epoch(*fake_epoch(e, rng, False))
    assert read_run(str(path)).num_epochs == 3
    assert not os.path.exists(str(path) + ".tmp")


def test_reader_in_second_process_while_writer_waits(tmp_path):
    """A writer process that pauses between epochs; this process reads after each epoch."""
    path = tmp_path / "run.h5"
    writer = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
        from test_log import write_run, fake_epoch
        from bioplaus.log import RunLog
        cfg, log, _ = write_run({str(path)!r}, n_epochs=1, probe_every=0)
        rng = np.random.default_rng(1)
        for e in (2, 3):
            print("epoch", e - 1, flush=True)
            sys.stdin.readline()          # wait for the reader
            log.append_epoch(*fake_epoch(e, rng, False))
        log.set_status("completed")
        print("done", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        for expected in (1, 2):
            assert proc.stdout.readline().split() == ["epoch", str(expected)]
            run = read_run(str(path))
            assert run.num_epochs == expected and run.status == "running"
            proc.stdin.write("\n")
            proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    run = read_run(str(path))
    assert run.num_epochs == 3 and run.status == "completed"


def test_checkpoint_roundtrip_and_atomicity(tmp_path):
    path = str(tmp_path / "run.h5.ckpt.npz")
    state = {"blocks.0.W": np.arange(6, dtype=np.float32).reshape(2, 3), "epoch": np.array(3)}
    save_checkpoint(path, state, {"epoch": 3})
    got, meta = load_checkpoint(path)
    assert meta["epoch"] == 3 and set(got) == set(state)
    np.testing.assert_array_equal(got["blocks.0.W"], state["blocks.0.W"])
    assert got["blocks.0.W"].dtype == np.float32
    assert not os.path.exists(path + ".tmp")
    # a stale half-written temporary file does not disturb the checkpoint
    with open(path + ".tmp", "wb") as fh:
        fh.write(b"PK\x03\x04garbage")
    assert load_checkpoint(path)[1]["epoch"] == 3
    with open(path, "wb") as fh:
        fh.write(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "none.npz"))
