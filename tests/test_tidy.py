"""Tidy views of run logs: a run as an xarray Dataset, runs as a long pandas DataFrame, and one row per run as
the CSV that pandas reads with no options (the sweep report's results.csv)."""

import io

import numpy as np
import pytest
from test_analysis import make_log

from bioplaus import analysis
from bioplaus.kinds import DENSE
from bioplaus.log import EPOCH_SERIES
from bioplaus.models import BlockSpec

xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")


@pytest.fixture
def two_logs(tmp_path):
    return [make_log(tmp_path / "a.h5", "glob", seed=1), make_log(tmp_path / "b.h5", "predsim-bpf", seed=2)]


def test_a_run_as_an_xarray_dataset(two_logs, tmp_path):
    path, w = two_logs[1]
    run = analysis.load_runs(path)[0]
    ds = analysis.to_xarray(run)
    assert dict(ds.sizes)["epoch"] == 4 and list(ds["layer"].values) == ["fc1", "fc2"]
    assert list(ds["epoch"].values) == [1, 2, 3, 4]
    np.testing.assert_allclose(ds["test_error"].values, w["epochs"]["test_error"])
    assert ds["test_error"].dims == ("epoch",)
    assert ds["test_loss_sim"].dims == ("epoch", "layer")
    np.testing.assert_allclose(ds["test_loss_sim"].sel(layer="fc2").values, w["layers"]["fc2"]["test_loss_sim"])
    np.testing.assert_allclose(ds["bp_angle"].sel(layer="fc1").values[[1, 3]], np.asarray(w["layers"]["fc1"]["bp_angle"])[[1, 3]])
    assert np.isnan(ds["bp_angle"].values[[0, 2]]).all()  # no probe at epochs 1 and 3
    # units and descriptions are the log's own attributes
    for name, (units, description) in EPOCH_SERIES.items():
        if name != "epoch":
            assert ds[name].attrs == {"units": units, "description": description}
    weight_norm = next(p for p in DENSE.probes(BlockSpec("fc1", DENSE, 8, 8)) if p.name == "weight_norm")
    assert ds["weight_norm"].attrs == {"units": weight_norm.units, "description": weight_norm.description}
    assert "binary code" in ds["test_loss_pred"].attrs["description"]  # pred-bpf's loss says what it is
    # the configuration and the log's root attributes
    assert ds.attrs["variant"] == "predsim-bpf" and ds.attrs["num_hidden"] == 32 and ds.attrs["lr"] == 5e-4
    assert ds.attrs["lr_decay_milestones"] == list(run.config.lr_decay_milestones) and ds.attrs["batch_norm"] == 1 and ds.attrs["data_dir"] == ""
    assert ds.attrs["status"] == "completed" and ds.attrs["path"] == path and '"variant"' in ds.attrs["config"]
    # the probe
    order = [2, 4]
    assert list(ds["probe_epoch"].values) == order
    np.testing.assert_array_equal(ds["similarity"].sel(layer="fc1", probe_epoch=4).values, w["similarity"]["fc1"][1])
    np.testing.assert_array_equal(ds["probe_labels"].values, w["labels"])
    ds.to_netcdf(tmp_path / "run.nc")  # every attribute is one netCDF can hold
    back = xr.open_dataset(tmp_path / "run.nc")
    np.testing.assert_allclose(back["test_loss_sim"].values, ds["test_loss_sim"].values)
    back.close()


def test_runs_as_a_long_dataframe(two_logs):
    paths = [p for p, _ in two_logs]
    df = analysis.to_dataframe(paths)
    assert list(df.columns) == ["run", "variant", "model", "dataset", "seed", "epoch", "layer", "series", "split",
                                "quantity", "value", "units"]
    for path, w in two_logs:
        mine = df[df.run == path]
        te = mine[(mine.series == "test_error") & mine.layer.isna()].sort_values("epoch")
        np.testing.assert_allclose(te.value, w["epochs"]["test_error"])
        assert set(te.split) == {"test"} and set(te.quantity) == {"error"} and set(te.units) == {"%"}
        fc2 = mine[(mine.layer == "fc2") & (mine.series == "test_error_pred")].sort_values("epoch")
        np.testing.assert_allclose(fc2.value, w["layers"]["fc2"]["test_error_pred"])
        bp = mine[(mine.layer == "fc1") & (mine.series == "bp_angle")]
        assert list(bp.epoch) == [2, 4]  # NaN entries (no probe) are left out
        assert bp.split.isna().all() and set(bp.quantity) == {"bp_angle"}
    assert not df.value.isna().any()
    assert set(df.variant) == {"glob", "predsim-bpf"}
    full = analysis.to_dataframe(paths, dropna=False)
    assert len(full) > len(df) and full.value.isna().any()
    per_epoch = df[df.quantity == "error"].pivot_table(index=["variant", "epoch"], columns="split", values="value")
    assert list(per_epoch.columns) == ["test", "train"] and len(per_epoch) == 8


def test_one_row_per_run_csv_reads_with_pandas_as_it_is(tmp_path):
    paths = [make_log(tmp_path / f"r{seed}.h5", "pred", seed=seed, n_epochs=6, lr=lr)[0]
             for seed, lr in ((1, 1e-3), (2, 1e-3), (3, 5e-4))]
    paths.append(make_log(tmp_path / "g.h5", "glob", seed=1, n_epochs=2, status="interrupted")[0])
    rows = analysis.runs_table(paths, last_k=3)
    text = analysis.runs_csv(rows)
    df = pd.read_csv(io.StringIO(text))  # no options
    assert list(df.columns[:6]) == list(analysis.RUNS_CSV_KEY)
    assert list(df.run) == ["r1", "r2", "r3", "g"]  # one row per run, in the order given
    # every overridden setting its own column: the runs differ from the paper's recipe in lr and size
    for col in ("lr", "num_hidden", "num_layers", "lr_decay_milestones"):
        assert col in df.columns
    assert "optim" not in df.columns and "batch_size" not in df.columns  # as the recipe: no column
    assert list(df.lr) == [1e-3, 1e-3, 5e-4, 5e-4] and df.lr.dtype == float
    runs = analysis.load_runs(paths)
    assert list(df.lr_decay_milestones) == [" ".join(map(str, r.config.lr_decay_milestones)) for r in runs]
    assert " " in df.lr_decay_milestones[0]  # one schedule, one cell
    assert df.seed.dtype == np.int64 and df.epochs.tolist() == [6, 6, 6, 2]
    assert df.status.tolist() == ["completed", "completed", "completed", "interrupted"]
    order = {r.path: r for r in runs}
    for i, path in enumerate(df.path):
        te = np.asarray(order[path].epochs["test_error"])
        assert df.test_error[i] == te[-1]  # written exactly
        assert df.test_error_last3[i] == pytest.approx(np.mean(te[-3:]))
        assert df.seconds[i] == pytest.approx(len(te))
    assert df.paper_test_error.notna().all() and df.variant.tolist() == ["pred", "pred", "pred", "glob"]
    assert df.dtypes["test_error"] == float and df.recipe.tolist() == ["fashion-mnist-mlp-pred"] * 3 + [
        "fashion-mnist-mlp-glob"]
    with pytest.raises(ValueError):
        analysis.runs_table(paths, last_k=0)
