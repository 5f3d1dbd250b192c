"""The HDF5 run log: roundtrip, self-description (exactly the declared series, each with units and a
description), reading while a writer runs, status, truncation, and logs of format 1 (read as they are,
converted when resumed)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from bioplaus.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bioplaus.config import Config
from bioplaus.log import (
    EPOCH_SERIES,
    FORMAT_VERSION,
    LogError,
    RunLog,
    declared_series,
    read_attrs,
    read_run,
    read_runs,
)
from bioplaus.models import build_spec
from bioplaus.ops import conv
from bioplaus.train import run_series

LAYERS = ["fc1", "fc2"]
B = 6
GOLDEN = Path(__file__).resolve().parent / "golden"


def series_of(cfg):
    """What a run of ``cfg`` on 28x28 images declares, by layer (the trainer's ``series``)."""
    return run_series(build_spec(cfg, (1, 28, 28), 10), cfg)


def fake_epoch(epoch: int, rng: np.random.Generator, with_probe: bool):
    stats = {
        "epoch": epoch, "lr": 5e-4 * 0.25 ** (epoch > 2), "train_loss": rng.random(), "train_error": 100 * rng.random(),
        "seconds": rng.random(),
        "layers": {name: {"loss_pred": rng.random(), "loss_sim": rng.random(), "error_pred": 100 * rng.random(),
                          "weight_norm": rng.random(), "update_norm": rng.random(), "fa_angle": float("nan")}
                   for name in LAYERS},
    }
    ev = {"test_loss": rng.random(), "test_error": 100 * rng.random(),
          "layers": {name: {"loss_pred": rng.random(), "loss_sim": rng.random(), "error_pred": 100 * rng.random()}
                     for name in LAYERS}}
    probe = None
    if with_probe:
        probe = {"layers": {name: {"bp_angle": 90 * rng.random()} for name in LAYERS},
                 "similarity": {name: rng.random((B, B)).astype(np.float32) for name in LAYERS},
                 "target_similarity": np.eye(B, dtype=np.float32), "labels": np.arange(B)}
    return stats, ev, probe


def write_run(path, n_epochs=3, probe_every=2, seed=0):
    cfg = Config(variant="predsim-bpf", epochs=5, num_layers=2, num_hidden=32, probe_every=probe_every).resolve()
    log = RunLog.create(str(path), cfg, "cpu (test)", 1234, series=series_of(cfg))
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
    assert run.config == cfg.replace(conv_algorithm=conv.AUTO["cpu"])  # "auto" as it resolved on the CPU
    assert run.attrs["status"] == "running" and run.attrs["parameters"] == 1234
    assert run.attrs["variant"] == "predsim-bpf" and run.attrs["format_version"] == FORMAT_VERSION == 2
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
    assert set(run.layers) == {"fc1", "fc2"}  # predsim-bpf declares nothing for the output layer
    # one probe snapshot (epoch 2) of each block
    np.testing.assert_array_equal(run.probe["epochs"], [2])
    assert run.probe["similarity"]["fc1"].shape == (1, B, B)
    np.testing.assert_array_equal(run.probe["similarity"]["fc2"][0], written[1][2]["similarity"]["fc2"])
    np.testing.assert_array_equal(run.probe["labels"], np.arange(B))
    assert [r.path for r in read_runs([str(path), str(path)])] == [str(path)] * 2


def test_every_dataset_has_units_and_description(tmp_path):
    path = tmp_path / "run.h5"
    cfg, _, _ = write_run(path)
    declared = declared_series(series_of(cfg))
    seen = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                seen.append(name)
                assert obj.attrs["units"] in ("%", "nats", "s", "1", "degrees"), name
                assert len(obj.attrs["description"]) > 10, name
        f.visititems(visit)
        assert set(f["epochs"]) == set(EPOCH_SERIES)
        assert set(f["layers"]) == set(declared) == {"fc1", "fc2"}
        assert set(f["layers/fc1"]) == set(declared["fc1"]) == {  # exactly what predsim-bpf produces
            "train_loss_pred", "test_loss_pred", "train_error_pred", "test_error_pred", "train_loss_sim",
            "test_loss_sim", "weight_norm", "update_norm", "fa_angle", "bp_angle", "probe_accuracy"}
        for name, (units, description) in declared["fc1"].items():
            attrs = f["layers/fc1"][name].attrs
            assert (attrs["units"], attrs["description"]) == (units, description)
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


def test_a_new_log_holds_every_declared_series_from_the_start(tmp_path):
    """Before any epoch, the layers' series are there, empty; an fa run declares its feedback angle for the
    output layer too, and no local loss anywhere."""
    cfg = Config(variant="fa", num_layers=2, num_hidden=16, probe_every=0).resolve()
    RunLog.create(str(tmp_path / "fa.h5"), cfg, "cpu", 1, series=series_of(cfg))
    run = read_run(str(tmp_path / "fa.h5"))
    assert run.num_epochs == 0
    assert {k: sorted(v) for k, v in run.layers.items()} == {
        "fc1": ["fb_angle", "update_norm", "weight_norm"], "fc2": ["fb_angle", "update_norm", "weight_norm"],
        "out": ["fb_angle"]}
    assert run.info["layers/out/fb_angle"][0] == "degrees"


def test_a_record_of_an_undeclared_series_is_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "run.h5"
    _, log, _ = write_run(path, n_epochs=1, probe_every=0)
    before = path.read_bytes()
    stats, ev, _ = fake_epoch(2, np.random.default_rng(3), False)
    stats["layers"]["fc1"]["loss_other"] = 0.5
    with pytest.raises(ValueError, match="fc1/loss_other"):
        log.append_epoch(stats, ev)
    assert path.read_bytes() == before


def test_a_format_1_log_reads_as_it_is_and_converts_on_resume(tmp_path):
    """golden/v1-run.h5 (bioplaus 247cccd, predsim-bpf, 1 epoch, no probe): the ten series of that time
    for every layer, NaN where the rule or the run has none. Read: as it is. Opened to resume with the
    run's series: those stay, number for number, the all-NaN others (and the all-NaN 'out' layer) go;
    without the series it is left as it was."""
    old = tmp_path / "old.h5"
    shutil.copy(GOLDEN / "v1-run.h5", old)
    v1 = read_run(str(old))
    assert v1.format_version == 1 and len(v1.layers["fc1"]) == 10 and np.all(np.isnan(v1.layers["fc1"]["bp_angle"]))
    RunLog.open_for_resume(str(old))
    assert read_run(str(old)).format_version == 1
    declared = declared_series(series_of(v1.config))
    RunLog.open_for_resume(str(old), series=series_of(v1.config))
    v2 = read_run(str(old))
    assert v2.format_version == FORMAT_VERSION and v2.num_epochs == v1.num_epochs == 1
    assert {k: set(v) for k, v in v2.layers.items()} == {k: set(v) for k, v in declared.items()}
    for layer, series in v2.layers.items():
        for name, values in series.items():
            np.testing.assert_array_equal(values, v1.layers[layer][name])
            assert v2.info[f"layers/{layer}/{name}"] == declared[layer][name]
    assert all(np.isfinite(v2.layers["fc1"][name]).all() for name in ("train_loss_pred", "fa_angle", "weight_norm"))


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


def test_a_log_records_what_auto_resolved_to_on_its_device(tmp_path):
    """A log never holds "auto" (which, in a log, means a log written before runs resolved it): written
    for a CPU it holds the CPU's rule, for a GPU "winograd"; a concrete setting as it is."""
    for device, algorithm, recorded in (("cpu (test)", "auto", conv.AUTO["cpu"]), ("gpu (test)", "auto", "winograd"),
                                        ("gpu (test)", "im2col", "im2col")):
        path = tmp_path / f"{device[:3]}-{algorithm}.h5"
        RunLog.create(str(path), Config(conv_algorithm=algorithm).resolve(), device, 1)
        assert json.loads(read_attrs(str(path))["config"])["conv_algorithm"] == recorded
        assert read_run(str(path)).config.conv_algorithm == recorded
