"""TensorBoard events from run logs: ``bioplaus.tensorboard.export`` and ``--tensorboard DIR``, read back
with tensorboardX's own protocol buffers (the event file is TFRecord: length, its CRC, the Event, its CRC)."""

from __future__ import annotations

import glob
import math
import os
import struct
import sys

import numpy as np
import pytest
from test_analysis import make_log
from test_cli import listing

from bioplaus import tensorboard
from bioplaus.cli import main
from bioplaus.log import read_run

pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2


def read_events(folder) -> list:
    """Every Event of every event file in ``folder``, in file order."""
    events = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        with open(path, "rb") as fh:
            data = fh.read()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            events.append(event_pb2.Event.FromString(data[i + 12:i + 12 + length]))
            i += 12 + length + 4
    return events


def scalars_of(folder) -> dict[tuple[str, int], float]:
    out = {}
    for ev in read_events(folder):
        for v in ev.summary.value:
            if v.WhichOneof("value") == "simple_value":
                out[(v.tag, ev.step)] = v.simple_value
    return out


def expected_of(path) -> dict[tuple[str, int], float]:
    run = read_run(path)
    want = {}
    for i, epoch in enumerate(run.epochs["epoch"]):
        for name, values in run.epochs.items():
            if name != "epoch" and not math.isnan(values[i]):
                want[(f"epochs/{name}", int(epoch))] = values[i]
        for layer, group in run.layers.items():
            for name, values in group.items():
                if not math.isnan(values[i]):
                    want[(f"layers/{layer}/{name}", int(epoch))] = values[i]
    return want


def test_export_writes_every_series_of_the_log(tmp_path):
    path, w = make_log(tmp_path / "run.h5", "predsim-bpf", n_epochs=4, probe_every=2)
    folder = tensorboard.export(path, tmp_path / "tb")
    assert folder == str(tmp_path / "tb" / "run")
    got, want = scalars_of(folder), expected_of(path)
    assert got.keys() == want.keys()  # every finite entry, NaN entries (bp_angle off the probe) left out
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key  # float32 in the event
    assert ("layers/fc1/bp_angle", 2) in got and ("layers/fc1/bp_angle", 1) not in got
    assert got[("epochs/test_error", 3)] == pytest.approx(w["epochs"]["test_error"][2])
    descriptions = {v.tag: v.metadata.summary_description for ev in read_events(folder) for v in ev.summary.value}
    assert descriptions["epochs/test_loss"].startswith("output-layer cross-entropy") and "(nats)" in \
        descriptions["epochs/test_loss"]
    # the events start with a purge from step 1: a re-export replaces the earlier one in TensorBoard
    starts = [ev for ev in read_events(folder) if ev.WhichOneof("what") == "session_log"]
    assert starts and starts[0].step == 1


def test_export_refuses_what_is_not_a_log(tmp_path):
    from bioplaus.log import LogError

    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(LogError):
        tensorboard.export(tmp_path / "x.h5", tmp_path / "tb")
    assert not (tmp_path / "tb").exists()


RUN = ["--variant", "pred", "--num-layers", "1", "--num-hidden", "16", "--epochs", "2", "--device", "cpu",
       "--no-progress", "--probe-every", "1"]


def test_a_run_with_tensorboard_exports_each_epoch_and_logs_the_same(tmp_path, capsys):
    log, plain = tmp_path / "a.h5", tmp_path / "b.h5"
    assert main([*RUN, "--out", str(log), "--tensorboard", str(tmp_path / "tb")]) == 0
    assert main([*RUN, "--out", str(plain)]) == 0
    capsys.readouterr()
    folder = tmp_path / "tb" / "a"
    got, want = scalars_of(folder), expected_of(str(log))
    assert got.keys() == want.keys() and {step for _, step in got} == {1, 2}
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    a, b = read_run(str(log)), read_run(str(plain))  # the export changes nothing in the run
    for name in a.epochs:
        if name != "seconds":
            np.testing.assert_array_equal(a.epochs[name], b.epochs[name])
    for layer in a.layers:
        for name in a.layers[layer]:
            np.testing.assert_array_equal(a.layers[layer][name], b.layers[layer][name])


def _refused(argv, root, capsys, match):
    before = listing(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and match in err, err
    assert listing(root) == before


def test_tensorboard_bad_input_writes_nothing(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_bytes(b"x")
    _refused([*RUN, "--out", str(tmp_path / "r.h5"), "--tensorboard", str(tmp_path / "afile")], tmp_path, capsys,
             "not a folder")
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # not installed
    _refused([*RUN, "--out", str(tmp_path / "r.h5"), "--tensorboard", str(tmp_path / "tb")], tmp_path, capsys,
             "pip install 'bioplaus[tensorboard]'")


def test_a_failing_export_warns_once_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    class Broken:
        def __init__(self, **kw):
            pass

        def add_text(self, *a, **kw):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(tensorboard, "_summary_writer", lambda: Broken)
    assert main([*RUN, "--out", str(tmp_path / "r.h5"), "--tensorboard", str(tmp_path / "tb")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: the TensorBoard export") == 1 and "the run goes on" in err
    assert read_run(str(tmp_path / "r.h5")).status == "completed"
