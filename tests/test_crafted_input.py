"""Crafted input (issue 24, class 3): files that declare more than they hold, JSON nested without end,
logs the figures cannot draw, environment settings set to ``inf``: one sentence, exit 2, nothing
written, and never a MemoryError, a RecursionError, a KeyError or an IndexError.

The crafted logs go to every reader of logs (``--resume``, ``sims/figures.py --logs``, ``--report``, which
lists what it could not read); the crafted checkpoints to ``--resume``; the crafted data files to the
dataset readers, whose memory is measured (tracemalloc) to show that nothing was allocated for what a
header declared; the environment settings the package reads (its test hooks, which a user may set
too) are tried with every kind of bad number.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import tarfile
import tracemalloc
import zipfile

import h5py
import numpy as np
import pytest
from test_analysis import make_log
from test_checked_first import resumable, stopped_run  # noqa: F401 -- fixtures
from test_cli import assert_refused, listing, work  # noqa: F401 -- `work` is a fixture
from test_data_inputs import tiny
from test_unsafe_files import assert_one_error

from bioplaus import limits
from bioplaus import sweep as sweep_mod
from bioplaus.checkpoint import load_checkpoint
from bioplaus.cli import main
from bioplaus.config import Config
from bioplaus.data import DataError, load_dataset
from bioplaus.figures import main as figures_main
from bioplaus.log import LogError, read_run
from bioplaus.runner import PAUSE_HOOK, SIGNAL_HOOK

TINY = ["--variant", "predsim", "--num-layers", "1", "--num-hidden", "32", "--device", "cpu", "--no-progress"]
DEEP = "[" * 100_000 + "]" * 100_000  # json.loads alone: a RecursionError


# ---------------------------------------------------------------------- crafted logs, every reader
def _huge(g, name: str) -> None:
    """``g[name]`` replaced by a series of 2**40 float64 (8 TiB) whose chunks were never written: the file
    stays small."""
    del g[name]
    g.create_dataset(name, shape=(2**40,), maxshape=(None,), chunks=(256,), dtype="f8")


def _every_series_huge(f) -> None:
    for g in [f["epochs"], *f["layers"].values()]:
        for name in list(g):
            _huge(g, name)
    for name in ("epochs", "labels", "target_similarity", "similarity"):
        del f["probe"][name]


def _probe(f, edit) -> None:
    edit(f["probe"])


CRAFTED_LOGS = {
    # what is changed: (the edit, words of the sentence)
    "a configuration nested 100,000 deep": (lambda f: f.attrs.__setitem__("config", DEEP), "nests deeper"),
    "a configuration of 2 MB": (lambda f: f.attrs.__setitem__("config", json.dumps({"x": "y" * (2 << 20)})),
                                "characters long"),
    "a configuration with a number too large for a float": (
        lambda f: f.attrs.__setitem__("config", json.dumps({"lr": 10**400})), "finite"),
    "every series declaring 8 TiB": (_every_series_huge, "declares"),
    "an epoch series declaring 8 TiB": (lambda f: _huge(f["epochs"], "train_error"), "do not all hold"),
    "a layer series declaring 8 TiB": (lambda f: _huge(f["layers/fc1"], "weight_norm"), "do not all hold"),
    "probe labels missing": (lambda f: _probe(f, lambda p: p.__delitem__("labels")), "probe group has"),
    "probe target of another size": (
        lambda f: _probe(f, lambda p: (p.__delitem__("target_similarity"),
                                       p.create_dataset("target_similarity", data=np.zeros((3, 3))))),
        "does not fit its probe group"),
    "a probe similarity of another shape": (
        lambda f: _probe(f, lambda p: (p["similarity"].__delitem__("fc1"),
                                       p["similarity"].create_dataset("fc1", data=np.zeros((2, 5, 4))))),
        "does not fit its probe group"),
    "a probe similarity declaring 2**36 snapshots": (
        lambda f: _probe(f, lambda p: (p.__delitem__("epochs"),
                                       p.create_dataset("epochs", shape=(2**36,), chunks=(256,), dtype="f8"))),
        "does not fit its probe group"),
    "probe epochs beyond the log's": (
        lambda f: _probe(f, lambda p: p["epochs"].__setitem__(0, 99.0)), "probe epochs"),
    "a probe group that is a dataset": (
        lambda f: (f.__delitem__("probe"), f.create_dataset("probe/similarity", data=[1.0])), "probe group"),
    "format_version -1": (lambda f: f.attrs.__setitem__("format_version", -1), "format_version is -1"),
    "format_version 0": (lambda f: f.attrs.__setitem__("format_version", 0), "format_version is 0"),
}


@pytest.fixture
def base_log(tmp_path):
    path = tmp_path / "logs" / "base.h5"
    path.parent.mkdir()
    make_log(path, "predsim", n_epochs=4, probe_every=2)
    return path


def _crafted(base_log, edit):
    data = base_log.read_bytes()
    path = base_log.with_name("crafted.h5")
    path.write_bytes(data)
    with h5py.File(path, "r+") as f:
        edit(f)
    base_log.unlink()
    return path


@pytest.mark.parametrize("case", sorted(CRAFTED_LOGS))
def test_a_crafted_log_is_one_sentence_for_every_reader(base_log, tmp_path, capsys, monkeypatch, case):
    edit, words = CRAFTED_LOGS[case]
    path = _crafted(base_log, edit)
    tracemalloc.start()
    try:
        with pytest.raises(LogError) as err:
            read_run(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert words in str(err.value) and "\n" not in str(err.value)
    assert peak < (64 << 20), f"{peak / 2**20:.0f} MiB allocated for a crafted log"
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    for argv, run in ((["--resume", str(path), "--epochs", "9"], main),
                      (["--logs", str(path), "--out-dir", str(tmp_path / "figs")], figures_main)):
        assert run(argv) == 2, argv
        assert words in assert_one_error(capsys.readouterr().err)
        assert listing(tmp_path) == before
    assert sweep_mod.main(["--report", str(path.parent)], out=io.StringIO()) == 2  # its only log: none read
    assert "no run logs" in assert_one_error(capsys.readouterr().err)


def test_the_report_lists_a_crafted_log_and_reports_the_others(base_log, tmp_path, capsys):
    make_log(base_log.parent / "good.h5", "glob", seed=3)
    path = _crafted(base_log, CRAFTED_LOGS["every series declaring 8 TiB"][0])
    assert sweep_mod.main(["--report", str(path.parent)], out=io.StringIO()) == 0
    assert "not read: crafted.h5" in capsys.readouterr().err
    assert "Not read: crafted.h5" in (path.parent / "results.md").read_text()


def test_a_log_of_a_run_stopped_before_its_first_epoch_is_not_drawn(tmp_path, capsys, monkeypatch):
    """The figures met it with a KeyError; the report counts it as a run that did not complete."""
    folder = tmp_path / "logs"
    folder.mkdir()
    make_log(folder / "done.h5", "glob", seed=1)
    make_log(folder / "stopped.h5", "pred", n_epochs=3, status="interrupted", seed=2)
    with h5py.File(folder / "stopped.h5", "r+") as f:  # as a run stopped before epoch 1 leaves it
        for g in ("epochs", "layers", "probe"):
            del f[g]
            f.create_group(g)
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    assert figures_main(["--logs", str(folder), "--out-dir", str(tmp_path / "figs")]) == 2
    assert "stopped.h5 holds no completed epoch" in assert_one_error(capsys.readouterr().err)
    assert listing(tmp_path) == before
    assert sweep_mod.main(["--report", str(folder)], out=io.StringIO()) == 0
    assert "interrupted after 0 of 3 epochs" in (folder / "results.md").read_text()


# ---------------------------------------------------------------------- crafted checkpoints
@pytest.fixture
def resumable_state(resumable):  # noqa: F811 -- the fixture
    """A run of 1 epoch of 2 (``test_checked_first.resumable``), its checkpoint's arrays and record."""
    state, meta = load_checkpoint(str(resumable) + ".ckpt.npz")
    return resumable, state, meta


def _npy(array: np.ndarray, shape: tuple | None = None) -> bytes:
    """A .npy of ``array``, its header saying ``shape`` (a lie) when given."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array)
    if shape is None:
        return buf.getvalue()
    head = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": shape}
    hbuf = io.BytesIO()
    np.lib.format.write_array_header_1_0(hbuf, head)
    return hbuf.getvalue() + array.tobytes()


def _archive(path, members: dict[str, bytes], compress=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)


CRAFTED_CHECKPOINTS = {
    # what: (members from (state, meta), compression, words)
    "a member declaring 4 TiB behind 16 bytes": (
        lambda s, m: {**{k: _npy(v) for k, v in s.items()}, "epoch": _npy(np.zeros(4, np.float32), (2**40,)),
                      "__bioplaus_meta__": _npy(np.array(json.dumps(m)))}, zipfile.ZIP_STORED, "declares"),
    "a deflated member (a zip bomb's way)": (
        lambda s, m: {**{k: _npy(v) for k, v in s.items()}, "__bioplaus_meta__": _npy(np.array(json.dumps(m)))},
        zipfile.ZIP_DEFLATED, "is not a stored .npy array"),
    "a record nested 100,000 deep": (
        lambda s, m: {**{k: _npy(v) for k, v in s.items()}, "__bioplaus_meta__": _npy(np.array(DEEP))},
        zipfile.ZIP_STORED, "nests deeper"),
    "a configuration in the record nested 100,000 deep": (
        lambda s, m: {**{k: _npy(v) for k, v in s.items()},
                      "__bioplaus_meta__": _npy(np.array(json.dumps({**m, "config": DEEP})))},
        zipfile.ZIP_STORED, "no readable configuration"),
    "a member of Python objects": (
        lambda s, m: {**{k: _npy(v) for k, v in s.items()}, "x": b"\x93NUMPY\x01\x00v\x00"
                      + b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(117) + b"\n",
                      "__bioplaus_meta__": _npy(np.array(json.dumps(m)))}, zipfile.ZIP_STORED, "damaged"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED_CHECKPOINTS))
def test_a_crafted_checkpoint_is_refused_before_it_is_read(resumable_state, work, capsys, case):  # noqa: F811
    out, state, meta = resumable_state
    members, compress, words = CRAFTED_CHECKPOINTS[case]
    meta = {k: v for k, v in meta.items() if k != "checkpoint_format"} | {"checkpoint_format": 2}
    _archive(str(out) + ".ckpt.npz", members(state, meta), compress)
    tracemalloc.start()
    try:
        assert_refused(["--resume", str(out), "--no-progress"], work, capsys, words)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (256 << 20), f"{peak / 2**20:.0f} MiB allocated for a crafted checkpoint"


def test_a_sweep_record_nested_without_end_is_skipped(base_log, capsys):
    folder = base_log.parent
    good = json.dumps({"command": "python sims/sweep.py --recipes good", "host": "h", "jobs": 1, "mpi": False,
                       "ranks_per_run": 1, "threads_per_job": 1, "started": "today"})
    (folder / "sweeps.jsonl").write_text(DEEP + "\n" + '{"a": ' * 5000 + "\n" + good + "\n")
    assert sweep_mod.main(["--report", str(folder)], out=io.StringIO()) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert "--recipes good" in (folder / "results.md").read_text()


def test_a_toml_configuration_nested_without_end_is_one_sentence(work, capsys):  # noqa: F811
    config = work / "cwd" / "deep.toml"
    config.write_text("lr = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert_refused([*TINY, "--config", str(config)], work, capsys, "nests its values too deeply")


def test_json_is_checked_for_depth_and_length_before_it_is_parsed():
    assert limits.json_depth('{"a": [1, {"b": "[[[["}]}') == 3  # brackets in strings do not count
    for text in (DEEP, "[" * (limits.JSON_MAX_DEPTH + 1)):
        with pytest.raises(limits.TooLarge, match="nests deeper"):
            limits.loads(text, "x")
    with pytest.raises(ValueError, match="not JSON"):
        Config.from_json('{"lr": ')
    assert limits.loads("[" * limits.JSON_MAX_DEPTH + "]" * limits.JSON_MAX_DEPTH, "x") is not None


# ---------------------------------------------------------------------- crafted data files
def _gz_header_only(shape: tuple[int, ...], data: bytes = b"") -> bytes:
    return gzip.compress(struct.pack(">BBBB", 0, 0, 8, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + data)


def test_an_idx_gzip_that_declares_more_images_is_refused_before_it_is_decompressed(tmp_path):
    """The issue's case: a 1 MB gzip whose header declares 1.37 M images reached 2.1 GB before the refusal."""
    from test_data_inputs import write_idx

    write_idx(tmp_path)
    bomb = _gz_header_only((1_370_000, 28, 28), bytes(1 << 20) * 8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(bomb)
    _refused_with_little_memory(tmp_path, "declares .* more than the .* it can hold")


def _refused_with_little_memory(folder, match: str) -> None:
    """Loading the tiny mnist-like set in ``folder`` is refused (``match``) with under 16 MiB allocated."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=match):
            load_dataset(tiny("mnist"), data_dir=folder, download=False, system_dirs=())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (16 << 20), f"{peak / 2**20:.0f} MiB allocated"


def test_an_idx_that_goes_on_past_its_header_stops_there(tmp_path):
    from test_data_inputs import write_idx

    write_idx(tmp_path)  # six 28x28 images, then 50 MB more than the header declares
    images = np.zeros((6, 28, 28), np.uint8).tobytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(_gz_header_only((6, 28, 28), images + bytes(50 << 20)))
    _refused_with_little_memory(tmp_path, "IDX file has more than")


def test_a_tar_member_that_declares_more_than_the_dataset_holds_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 10 << 30  # declared; the archive holds nothing of it
        tar.addfile(info)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(DataError, match="the member cifar-10-batches-py/data_batch_1 declares 10.0 GiB"):
        load_dataset(tiny("cifar10"), data_dir=tmp_path, download=False, system_dirs=())


# ---------------------------------------------------------------------- the environment
BAD_NUMBERS = ("inf", "-inf", "nan", "1e300", "-1", "99999999999999999999", "soon", "")
ENVIRONMENT = {  # every setting the package reads that is a number, with the forms it takes
    PAUSE_HOOK: [f"{n}" for n in BAD_NUMBERS if n] + [f"0@{n}" for n in BAD_NUMBERS] + ["0@0"],
    SIGNAL_HOOK: [f"train@{n}" for n in BAD_NUMBERS] + ["train@0", "@1", "tr ain@1"],
}
ENV_CASES = [(name, value) for name, values in ENVIRONMENT.items() for value in values]


@pytest.mark.parametrize("name,value", ENV_CASES, ids=[f"{n}={v}" for n, v in ENV_CASES])
def test_an_environment_setting_is_checked_first(work, capsys, monkeypatch, name, value):  # noqa: F811
    monkeypatch.setenv(name, value)
    assert_refused([*TINY, "--epochs", "1"], work, capsys, name)
