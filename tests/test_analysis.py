"""The analysis module on run logs with made-up, known content (written with RunLog directly), and on a
log of format 1 (bioplaus 247cccd, every series of every rule, NaN where a rule has none)."""

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from helpers import block_series

from bioplaus import analysis
from bioplaus.config import Config
from bioplaus.heads import PredHead
from bioplaus.log import LogError, RunLog
from bioplaus.models import build_spec
from bioplaus.train import run_series

B = 8  # probe batch


def make_log(path, variant="predsim", n_epochs=4, blocks=("fc1", "fc2"), seed=0, probe_every=2, status="completed",
             **cfg_kw):
    """A run log with random numbers; returns (path, dict of every number written)."""
    cfg = Config(variant=variant, epochs=n_epochs, num_layers=len(blocks), num_hidden=32, probe_every=probe_every,
                 **cfg_kw).resolve()
    fake = block_series(feedback=variant.endswith("-bpf"))  # every made-up log has each block's series; a bpf
    log = RunLog.create(str(path), cfg, "cpu (test)", 1000, series={b: fake for b in blocks})  # loss is its own
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(B) % 3)  # unsorted: the plot must sort them
    written = {"epochs": {k: [] for k in ("train_error", "test_error")},
               "layers": {b: {k: [] for k in ("test_loss_pred", "test_loss_sim", "test_error_pred", "train_loss_pred",
                                              "fa_angle", "bp_angle")} for b in blocks},
               "similarity": {b: [] for b in blocks}, "labels": labels, "probe_epochs": []}
    for e in range(1, n_epochs + 1):
        tr, te = 100 * rng.random(), 100 * rng.random()
        written["epochs"]["train_error"].append(tr)
        written["epochs"]["test_error"].append(te)
        st_layers, ev_layers = {}, {}
        for b in blocks:
            w = {"loss_pred": rng.random(), "loss_sim": rng.random(), "error_pred": 100 * rng.random(),
                 "fa_angle": 90 * rng.random(), "weight_norm": 1.0, "update_norm": 0.1}
            t = {"loss_pred": rng.random(), "loss_sim": rng.random(), "error_pred": 100 * rng.random()}
            st_layers[b], ev_layers[b] = w, t
            written["layers"][b]["train_loss_pred"].append(w["loss_pred"])
            written["layers"][b]["fa_angle"].append(w["fa_angle"])
            for k in ("loss_pred", "loss_sim", "error_pred"):
                written["layers"][b][f"test_{k}"].append(t[k])
        probe = None
        if probe_every and e % probe_every == 0:
            written["probe_epochs"].append(e)
            probe = {"layers": {}, "similarity": {}, "labels": labels,
                     "target_similarity": (labels[:, None] == labels[None, :]).astype(np.float32)}
            for b in blocks:
                angle = 90 * rng.random()
                S = rng.uniform(-1, 1, (B, B)).astype(np.float32)
                probe["layers"][b] = {"bp_angle": angle}
                probe["similarity"][b] = S
                written["similarity"][b].append(S)
            for b in blocks:
                written["layers"][b]["bp_angle"].append(probe["layers"][b]["bp_angle"])
        else:
            for b in blocks:
                written["layers"][b]["bp_angle"].append(np.nan)
        log.append_epoch({"epoch": e, "train_loss": rng.random(), "train_error": tr, "lr": 5e-4, "seconds": 1.0,
                          "layers": st_layers}, {"test_loss": rng.random(), "test_error": te, "layers": ev_layers},
                         probe)
    log.set_status(status)
    return str(path), written


@pytest.fixture
def two_runs(tmp_path):
    a = make_log(tmp_path / "a.h5", "glob", seed=1)
    b = make_log(tmp_path / "b.h5", "predsim-bpf", seed=2)
    return [a, b]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_load_runs_paths_globs_folders(two_runs, tmp_path):
    (pa, _), (pb, _) = two_runs
    assert [r.path for r in analysis.load_runs(pa, pb)] == [pa, pb]
    assert [r.path for r in analysis.load_runs([pb, pa])] == [pb, pa]
    assert [r.path for r in analysis.load_runs(str(tmp_path))] == [pa, pb]
    assert [r.path for r in analysis.load_runs(str(tmp_path / "*.h5"))] == [pa, pb]
    assert len(analysis.load_runs(pa, str(tmp_path))) == 2  # duplicates read once
    with pytest.raises(ValueError):
        analysis.load_runs(str(tmp_path / "nothing-*.h5"))
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(LogError):
        analysis.load_runs(str(tmp_path / "junk.h5"))


def test_many_logs_to_arrays_and_tables(tmp_path):
    made = [make_log(tmp_path / f"r{i}.h5", "pred", n_epochs=2 + i, seed=i) for i in range(5)]
    runs = analysis.load_runs(str(tmp_path))
    assert len(runs) == 5
    stacked = analysis.stack_epochs(runs, "test_error")
    assert stacked.shape == (5, 6)
    for i, (_, w) in enumerate(made):
        np.testing.assert_allclose(stacked[i, : 2 + i], w["epochs"]["test_error"])
        assert np.isnan(stacked[i, 2 + i:]).all()
    table = analysis.summary_table(runs)
    assert [row["epochs"] for row in table] == [2, 3, 4, 5, 6]
    for row, (_, w) in zip(table, made):
        assert row["final_test_error"] == pytest.approx(w["epochs"]["test_error"][-1])
        assert row["best_test_error"] == pytest.approx(min(w["epochs"]["test_error"]))
        assert row["variant"] == "pred" and row["model"] == "mlp 2x32"
    series = analysis.layer_series(runs[0], "test_error_pred")
    np.testing.assert_allclose(series, [made[0][1]["layers"][b]["test_error_pred"] for b in ("fc1", "fc2")])


def test_block_names_in_depth_order(tmp_path):
    path, _ = make_log(tmp_path / "deep.h5", "pred", n_epochs=1, blocks=[f"fc{i}" for i in (1, 2, 10, 3)])
    assert analysis.block_names(analysis.load_runs(path)[0]) == ["fc1", "fc2", "fc3", "fc10"]


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def test_plot_errors_lines_are_the_logged_series(two_runs):
    runs = analysis.load_runs([p for p, _ in two_runs])
    fig = analysis.plot_errors(runs)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 4
    assert [ln.get_label() for ln in lines] == ["glob train", "glob test", "predsim-bpf train", "predsim-bpf test"]
    assert [ln.get_linestyle() for ln in lines] == ["-", "--", "-", "--"]
    assert [ln.get_color() for ln in lines] == [analysis.rule_color("glob")] * 2 + [analysis.rule_color("predsim-bpf")] * 2
    for k, (_, w) in enumerate(two_runs):
        np.testing.assert_allclose(lines[2 * k].get_ydata(), w["epochs"]["train_error"])
        np.testing.assert_allclose(lines[2 * k + 1].get_ydata(), w["epochs"]["test_error"])
        np.testing.assert_allclose(lines[2 * k].get_xdata(), [1, 2, 3, 4])
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "error (%)"
    assert "train" in ax.get_title() and "test" in ax.get_title()
    assert "fashion-mnist-mini" in ax.get_title() and "mlp 2x32" in ax.get_title()  # dataset and model
    # each rule once, then the two line styles: not one entry per line
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["glob", "predsim-bpf", "train", "test"]


def test_plot_errors_same_variant_labels_differ(tmp_path):
    a, _ = make_log(tmp_path / "a.h5", "pred", seed=1)
    b, _ = make_log(tmp_path / "b.h5", "pred", seed=2, blocks=("fc1",))
    lines = analysis.plot_errors([a, b]).axes[0].get_lines()
    labels = [ln.get_label() for ln in lines]
    assert len(set(labels)) == 4 and labels[0].startswith("pred mlp 2x32") and labels[2].startswith("pred mlp 1x32")
    assert {ln.get_color() for ln in lines} == {analysis.rule_color("pred")}  # one rule, one colour
    assert lines[0].get_marker() == lines[1].get_marker() != lines[2].get_marker()  # told apart by marker


def test_plot_errors_into_given_axes(two_runs):
    fig, ax = plt.subplots()
    assert analysis.plot_errors(two_runs[0][0], ax=ax) is fig
    assert len(ax.get_lines()) == 2


def test_plot_layer_dynamics_a_panel_per_series_the_log_holds(two_runs):
    path, w = two_runs[1]  # predsim-bpf: its pred loss is the binary-code loss
    run = analysis.load_runs(path)[0]
    fig = analysis.plot_layer_dynamics(path)
    axes = _visible(fig)
    expected = ["loss_pred (nats)", "loss_sim", "error_pred (%)", "update_norm", "weight_norm", "bp_angle (degrees)",
                "fa_angle (degrees)"]
    assert [ax.get_ylabel() for ax in axes] == expected
    assert "binary code" in axes[0].get_title()  # pred-bpf's loss says what it is
    assert "similarity" in axes[1].get_title() and "predictor" in axes[2].get_title()
    for ax, key in zip(axes[:3], ("loss_pred", "loss_sim", "error_pred")):
        lines = ax.get_lines()
        assert [ln.get_label() for ln in lines] == ["fc1 train", "fc1 test", "fc2 train", "fc2 test"]
        assert [ln.get_linestyle() for ln in lines] == ["-", "--", "-", "--"]
        for ln in lines:
            block, split = ln.get_label().split()
            values = w["layers"][block].get(f"{split}_{key}")
            if values is not None:
                np.testing.assert_allclose(ln.get_ydata(), values)
        assert [t.get_text() for t in ax.texts] == ["fc1", "fc2"]  # layers named at the lines' ends
        assert ax.get_xlabel() == "epoch"
        # one hue per rule; the deepest block in it, shallower ones lighter
        assert lines[2].get_color() == analysis.rule_color("predsim-bpf") != lines[0].get_color()
    bp = axes[5].get_lines()
    np.testing.assert_allclose(bp[0].get_xdata(), [2, 4])  # probe epochs only: NaN epochs left out
    np.testing.assert_allclose(bp[0].get_ydata(), np.asarray(w["layers"]["fc1"]["bp_angle"])[[1, 3]])
    assert "predsim-bpf" in fig._suptitle.get_text() and "fashion-mnist-mini" in fig._suptitle.get_text()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["train", "test"]
    test_only = _visible(analysis.plot_layer_dynamics(path, split="test"))
    assert [ln.get_label() for ln in test_only[0].get_lines()] == ["fc1 test", "fc2 test"]
    assert len(test_only[3].get_lines()) == 2  # a series of no split is drawn whatever the split
    with pytest.raises(ValueError):
        analysis.plot_layer_dynamics(path, split="valid")
    assert [q.name for q in analysis.layer_quantities(run)] == [a.split(" ")[0] for a in expected]


def test_plot_layer_dynamics_draws_only_what_the_log_holds(tmp_path):
    cfg = Config(variant="glob", epochs=2, num_layers=1, num_hidden=8).resolve()
    series = run_series(build_spec(cfg, (1, 28, 28), 10), cfg)
    log = RunLog.create(str(tmp_path / "g.h5"), cfg, "cpu", 10, series=series)
    for e in (1, 2):
        log.append_epoch({"epoch": e, "train_error": 50.0, "layers": {"fc1": {"weight_norm": 1.0 + e}}},
                         {"test_error": 40.0})
    (ax,) = _visible(analysis.plot_layer_dynamics(str(tmp_path / "g.h5")))  # one panel, not three empty ones
    assert ax.get_ylabel() == "weight_norm" and "Frobenius norm" in ax.get_title()
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [2.0, 3.0])


def test_plot_depth_separates_what_differs(two_runs, tmp_path):
    pred, _ = make_log(tmp_path / "p.h5", "pred", seed=3)
    paths = [p for p, _ in two_runs] + [pred]
    fig = analysis.plot_depth(paths, epoch=2)
    axes = _visible(fig)
    losses = [ax for ax in axes if ax.get_ylabel() == "loss_pred (nats)"]
    # pred's cross-entropy and predsim-bpf's binary-code loss: two panels, each with its own run
    assert len(losses) == 2 and len({ax.get_title() for ax in losses}) == 2
    code, ce = sorted(losses, key=lambda ax: "binary code" not in ax.get_title())
    assert [ln.get_label() for ln in code.get_lines()] == ["predsim-bpf"]
    assert [ln.get_label() for ln in ce.get_lines()] == ["glob", "pred"]  # these made-up logs give glob one too
    err = next(ax for ax in axes if ax.get_ylabel() == "error_pred (%)")
    assert [ln.get_label() for ln in err.get_lines()] == ["glob", "predsim-bpf", "pred"]
    for ln, (_, w) in zip(err.get_lines(), two_runs):
        np.testing.assert_allclose(ln.get_xdata(), [1, 2])
        np.testing.assert_allclose(ln.get_ydata(), [w["layers"][b]["test_error_pred"][1] for b in ("fc1", "fc2")])
        assert ln.get_color() == analysis.rule_color(ln.get_label())
    assert [t.get_text() for t in err.get_xticklabels()] == ["fc1", "fc2"] and err.get_xlabel() == "block (depth)"
    assert "epoch 2" in fig._suptitle.get_text() and "mlp 2x32" in fig._suptitle.get_text()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["glob", "predsim-bpf", "pred"]
    last = analysis.plot_depth(two_runs[0][0])
    loss = next(ax for ax in _visible(last) if ax.get_ylabel() == "loss_pred (nats)")
    np.testing.assert_allclose(loss.get_lines()[0].get_ydata(),
                               [two_runs[0][1]["layers"][b]["test_loss_pred"][-1] for b in ("fc1", "fc2")])
    with pytest.raises(ValueError):
        analysis.plot_depth(two_runs[0][0], epoch=9)


def test_plot_angles_a_row_per_angle_a_column_per_layer(two_runs):
    path, w = two_runs[1]
    fig = analysis.plot_angles(path)
    cells = _visible(fig)
    assert len(cells) == 4  # bp_angle and fa_angle (the log's degrees) x fc1, fc2
    assert [ax.get_title() for ax in cells] == ["fc1", "fc2", "", ""]
    assert "backprop" in cells[0].get_ylabel() and "feedback" in cells[2].get_ylabel()
    bp = [ln for ln in cells[0].get_lines() if not ln.get_label().startswith("_")]
    np.testing.assert_allclose(bp[0].get_xdata(), [2, 4])
    np.testing.assert_allclose(bp[0].get_ydata(), np.asarray(w["layers"]["fc1"]["bp_angle"])[[1, 3]])
    fa = [ln for ln in cells[3].get_lines() if not ln.get_label().startswith("_")]
    np.testing.assert_allclose(fa[0].get_ydata(), w["layers"]["fc2"]["fa_angle"])
    both = analysis.plot_angles([p for p, _ in two_runs])
    assert [ln.get_label() for ln in _visible(both)[0].get_lines() if not ln.get_label().startswith("_")] == [
        "glob", "predsim-bpf"]
    assert [t.get_text() for t in both.legends[0].get_texts()] == ["glob", "predsim-bpf"]


def test_plot_similarity_grid_sorted_by_class(two_runs):
    path, w = two_runs[1]
    order = np.argsort(w["labels"], kind="stable")
    fig = analysis.plot_similarity(path)
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == 2 * 3  # 2 blocks x (2 probe epochs + S(Y))
    titles = [ax.get_title() for ax in images]
    assert titles == ["fc1, epoch 2", "fc1, epoch 4", "S(Y) target", "fc2, epoch 2", "fc2, epoch 4", "S(Y) target"]
    for ax, (b, k) in zip(images[:2] + images[3:5], [("fc1", 0), ("fc1", 1), ("fc2", 0), ("fc2", 1)]):
        np.testing.assert_allclose(ax.get_images()[0].get_array(), w["similarity"][b][k][order][:, order])
    target = images[2].get_images()[0].get_array()
    sorted_labels = w["labels"][order]
    np.testing.assert_array_equal(target, (sorted_labels[:, None] == sorted_labels[None, :]).astype(np.float32))
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert "similarity" in bar.get_ylabel()  # a labelled colorbar
    one = analysis.plot_similarity(path, epochs=[4], layers=["fc2"])
    assert [ax.get_title() for ax in one.axes if ax.get_images()] == ["fc2, epoch 4", "S(Y) target"]
    with pytest.raises(ValueError):
        analysis.plot_similarity(path, epochs=[3])


def test_paper_tables_is_the_shared_copy():
    import pathlib

    shared = pathlib.Path("/work/shared/paper/tables.json")
    if shared.exists():
        assert analysis.paper_tables() == json.loads(shared.read_text())
    t = analysis.paper_tables()
    assert t["tables"]["fashion-mnist"]["rows"][0]["model"] == "mlp-3x1024"


@pytest.mark.parametrize("dataset,key,variant", [
    ("fashion-mnist", "mlp-3x1024", "predsim"), ("cifar10", "vgg11b(3x)", "predsim"), ("mnist", "vgg8b", "glob"),
    ("cifar100", "mlp-3x3000", "sim"), ("fashion-mnist", "vgg8b(2x)+cutout", "predsim"),
])
def test_paper_error_lookup_matches_tables(dataset, key, variant):
    row = next(r for r in analysis.paper_tables()["tables"][dataset]["rows"] if r["model"] == key)
    assert analysis.paper_test_error(dataset, key, variant) == row[variant]


def test_paper_error_lookup_bpf_and_glob_sim():
    assert analysis.paper_test_error("cifar10", "vgg8b", "predsim-bpf") == 9.02
    assert analysis.paper_test_error("cifar10", "vgg8b", "sim-bpf") == 13.39
    assert analysis.paper_test_error("stl10", "vgg8b", "glob+sim") == 25.6
    assert analysis.paper_test_error("fashion-mnist", "mlp-3x1024", "pred-bpf") is None
    assert analysis.paper_model_key("vgg11b", 3.0, True) == "vgg11b(3x)+cutout"
    assert analysis.paper_model_key("mlp", num_layers=3, num_hidden=3000) == "mlp-3x3000"
    # a wide ResNet: the paper's reference rows (backprop only, so no local-rule number)
    assert analysis.paper_model_key("wresnet28-10") == "wrn (reference, global only)"
    assert analysis.paper_test_error("cifar10", analysis.paper_model_key("wresnet28-10"), "glob") == 3.87
    assert analysis.paper_test_error("cifar10", analysis.paper_model_key("wresnet28-10", cutout=True), "glob") == 3.08
    assert analysis.paper_test_error("cifar10", analysis.paper_model_key("wresnet28-10"), "predsim") is None
    assert analysis.paper_test_error("fashion-mnist", analysis.paper_model_key("wresnet28-10"), "glob") is None


def test_a_wide_resnet_is_compared_with_the_papers_reference_row():
    from types import SimpleNamespace

    def setting(model, cutout=False):
        config = SimpleNamespace(dataset="cifar10", model=model, feat_mult=1.0, cutout=cutout, num_layers=3,
                                 num_hidden=1024)
        return analysis._paper_setting(SimpleNamespace(config=config))

    assert setting("wresnet28-10") == ("cifar10", "wrn (reference, global only)", [])
    assert setting("wresnet28-10", cutout=True)[1] == "wrn+cutout (reference, global only)"
    _dataset, key, notes = setting("wresnet16-4")
    assert key == "wrn (reference, global only)" and notes == ["network wresnet16-4, the paper's reference row is a WRN-28-10"]


def test_paper_comparison_small_run_says_what_differs(tmp_path):
    path, w = make_log(tmp_path / "p.h5", "predsim", n_epochs=3)
    (row,) = analysis.paper_comparison([path])
    expected = next(r for r in analysis.paper_tables()["tables"]["fashion-mnist"]["rows"]
                    if r["model"] == "mlp-3x1024")["predsim"]
    assert row["paper_test_error"] == expected
    assert row["model"] == "mlp-3x1024" and row["recipe"] == "fashion-mnist-mlp-predsim"
    assert row["test_error"] == pytest.approx(w["epochs"]["test_error"][-1])
    text = " ".join(row["differences"])
    assert "fashion-mnist-mini" in text and "epochs 3 (paper 200)" in text and "mlp-2x32" in text
    assert not row["matches_paper"]
    md = analysis.comparison_markdown([row])
    assert md.count("\n") == 2 and f"{expected:.2f}" in md and "epochs 3 (paper 200)" in md


def test_paper_comparison_exact_recipe_matches(tmp_path):
    from bioplaus.recipes import get_recipe

    recipe = get_recipe("fashion-mnist-mlp-glob")
    # a run with exactly the recipe's configuration, one epoch written so far (status 'running')
    c = Config.from_dict(recipe).resolve()
    log = RunLog.create(str(tmp_path / "full.h5"), c, "cpu", 1)
    log.append_epoch({"epoch": 1, "train_error": 9.0}, {"test_error": 8.0})
    (row,) = analysis.paper_comparison([str(tmp_path / "full.h5")])
    assert row["paper_test_error"] == 8.37
    assert row["differences"] == ["run running after 1 epochs"]
    log.set_status("completed")
    (row,) = analysis.paper_comparison([str(tmp_path / "full.h5")])
    assert row["differences"] == [] and row["matches_paper"]
    assert "same setting" in analysis.comparison_markdown([row])


def test_paper_comparison_without_paper_number(two_runs):
    row = analysis.paper_comparison(two_runs[1][0])[0]
    assert row["variant"] == "predsim-bpf" and row["paper_test_error"] is None
    assert any("no run" in d for d in row["differences"])
    assert "| — |" in analysis.comparison_markdown([row])


def test_figures_command_draws_from_logs(two_runs, tmp_path):
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "figures", pathlib.Path(__file__).resolve().parents[1] / "sims" / "figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    out = tmp_path / "figs"
    assert figures.main(["--logs", str(two_runs[0][0]), str(two_runs[1][0]), "--out-dir", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["angles.png", "depth.png", "errors.png", "layer_dynamics.png", "paper_comparison.md",
                     "similarity.png"]
    assert all((out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names if n.endswith(".png"))
    table = (out / "paper_comparison.md").read_text()
    assert "| glob |" in table and "| predsim-bpf |" in table


# ---------------------------------------------------------------------- every rule, from real (tiny) runs
@pytest.fixture(scope="module")
def every_rule(tmp_path_factory):
    """A 2-epoch log of every rule of bioplaus.rules.RULES (an mlp 2x16 on 256 images, the probe every epoch),
    written by the real trainer and log: what each rule logs is what it logs in a real run."""
    import dataclasses

    from bioplaus import runner
    from bioplaus.backend import NUMPY
    from bioplaus.data import load_dataset
    from bioplaus.rules import RULES

    ds = load_dataset("fashion-mnist-mini")
    ds = dataclasses.replace(ds, x_train=ds.x_train[:256], y_train=ds.y_train[:256], x_test=ds.x_test[:256],
                             y_test=ds.y_test[:256])
    folder = tmp_path_factory.mktemp("every-rule")
    runs = []
    for variant in RULES:
        cfg = Config(variant=variant, epochs=2, num_layers=2, num_hidden=16, probe_every=1, device="cpu").resolve()
        trainer = runner.make_trainer(cfg, NUMPY, ds)
        log = RunLog.create(str(folder / f"{variant}.h5"), cfg, "cpu", trainer.num_parameters, series=trainer.series)
        for _ in range(cfg.epochs):
            log.append_epoch(trainer.train_epoch(), trainer.evaluate(), trainer.probe())
        log.set_status("completed")
        runs.append(analysis.load_runs(log.path)[0])
    return runs


def test_every_rule_gets_a_non_empty_panel_for_each_series_it_logs(every_rule):
    from bioplaus.rules import RULES

    assert [r.config.variant for r in every_rule] == list(RULES)
    for run in every_rule:
        held = analysis.layer_quantities(run)
        assert held, run.config.variant
        axes = _visible(analysis.plot_layer_dynamics(run))
        assert [ax.get_ylabel() for ax in axes] == [q.ylabel for q in held], run.config.variant
        for ax in axes:
            assert ax.get_lines() and not ax.texts[0].get_text().startswith("no "), (run.config.variant, ax.get_title())
        plt.close("all")
    fa = next(r for r in every_rule if r.config.variant == "fa")
    held = {q.name: q for q in analysis.layer_quantities(fa)}
    assert set(held) == {"weight_norm", "update_norm", "bp_angle", "fb_angle", "probe_accuracy"}
    assert held["fb_angle"].title == "angle between the matrix that carries the error back through the layer and " \
                                     "the layer's forward weights"  # the log's description, asides dropped
    for fig in (analysis.plot_depth(every_rule), analysis.plot_angles(every_rule)):
        for ax in _visible(fig):
            assert [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")], ax.get_title()


def test_the_linear_probe_is_logged_declared_and_drawn_for_every_rule(every_rule):
    """--probe-every logs each block's linear-probe accuracy with its units and description, and the
    figures command's depth and layer-dynamics figures give it a panel (one line per rule)."""
    for run in every_rule:
        for block in analysis.block_names(run):
            values = np.asarray(run.layers[block]["probe_accuracy"])
            assert values.shape == (2,) and np.all((values >= 0) & (values <= 100)), (run.config.variant, block)
            units, description = analysis.series_info(run, f"layers/{block}/probe_accuracy")
            assert units == "%" and description.startswith("test accuracy of a linear probe"), run.config.variant
        assert "probe_accuracy" not in run.layers.get("out", {})
    glob = next(r for r in every_rule if r.config.variant == "glob")
    assert np.nanmean(glob.layers["fc2"]["probe_accuracy"]) > 30.0  # well above chance (10 %) after 2 epochs
    depth = {ax.get_ylabel(): ax for ax in _visible(analysis.plot_depth(every_rule))}
    lines = [ln for ln in depth["probe_accuracy (%)"].get_lines() if not ln.get_label().startswith("_")]
    assert len(lines) == len(every_rule)
    assert "probe_accuracy (%)" in [ax.get_ylabel() for ax in _visible(analysis.plot_layer_dynamics(glob))]


def test_one_colour_per_rule_in_every_plot(every_rule):
    from bioplaus.rules import RULES

    colours = {v: analysis.rule_color(v) for v in RULES}
    assert len(set(colours.values())) == len(RULES)  # every rule its own
    assert analysis.rule_color("pred-bpf") != colours["pred"]
    seen: dict[str, set] = {v: set() for v in RULES}
    figs = [analysis.plot_errors(every_rule), analysis.plot_depth(every_rule), analysis.plot_angles(every_rule)]
    for fig in figs:
        for ax in fig.axes:
            for ln in ax.get_lines():
                variant = ln.get_label().split(" ")[0]
                if variant in seen:
                    seen[variant].add(ln.get_color())
    for run in every_rule:  # one run's blocks: its rule's colour, the deepest block exactly
        for ax in _visible(analysis.plot_layer_dynamics(run)):
            layers = list(dict.fromkeys(ln.get_label().split(" ")[0] for ln in ax.get_lines()))
            deepest = [ln for ln in ax.get_lines() if ln.get_label().split(" ")[0] == layers[-1]]
            seen[run.config.variant].update(ln.get_color() for ln in deepest)
    rows = analysis.results_table(every_rule)
    bars = analysis.plot_results(rows).axes[0]
    for row, container in zip(rows, bars.containers):
        seen[row["variant"]].add(container.lines[0].get_color())
    assert {v: c for v, c in seen.items()} == {v: {colours[v]} for v in RULES}


def test_a_format_1_log_opens_and_draws(tmp_path):
    """An old log (format 1: ten series for every layer, NaN where predsim-bpf has none) is read as it is;
    the per-block panels are the series with numbers in them; the figures command draws from it."""
    from bioplaus.figures import main

    old = tmp_path / "logs" / "v1-run.h5"
    old.parent.mkdir()
    shutil.copy(Path(__file__).resolve().parent / "golden" / "v1-run.h5", old)
    run = analysis.load_runs(str(old))[0]
    assert run.format_version == 1 and "bp_angle" in run.layers["fc1"]  # all NaN: no probe in this run
    assert analysis.block_names(run) == ["fc1", "fc2"]
    held = [q.name for q in analysis.layer_quantities(run)]  # the series with numbers in them
    assert held == ["loss_pred", "loss_sim", "error_pred", "update_norm", "weight_norm", "fa_angle"]
    assert analysis.layer_series(run, "fa_angle").shape == (2, 1)
    with pytest.raises(ValueError, match="no layer series 'loss_typo'"):
        analysis.layer_series(run, "loss_typo")
    from bioplaus.runner import run as train  # today's log of the same run: format 2, the same panels

    new = train({"variant": "predsim-bpf", "num_layers": 2, "num_hidden": 8, "epochs": 1, "dropout": 0.1, "seed": 4,
                 "device": "cpu"}, out=str(tmp_path / "new.h5"))
    assert set(analysis.layer_quantities(analysis.load_runs(new.path)[0])) == set(analysis.layer_quantities(run))
    assert main(["--logs", str(old.parent), "--out-dir", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "layer_dynamics.png").stat().st_size > 0


def test_a_new_heads_statistics_get_their_own_panels(tmp_path):
    """The panels come from the log: a head's loss that no list names (here 'loss_mine') is drawn."""
    from bioplaus.probes import MEAN, Probe

    cfg = Config(variant="pred", epochs=2, num_layers=1, num_hidden=8).resolve()
    mine = Probe("loss_mine", "nats", "a head's own loss", MEAN, loss=True)
    series = {"fc1": (*PredHead(feedback=False).probes(), mine)}
    log = RunLog.create(str(tmp_path / "m.h5"), cfg, "cpu", 10, series=series)
    for e in (1, 2):
        values = {"loss_pred": 1.0 / e, "error_pred": 50.0, "loss_mine": 0.5 / e}
        log.append_epoch({"epoch": e, "train_error": 50.0, "layers": {"fc1": values}},
                         {"test_error": 40.0, "layers": {"fc1": values}})
    run = analysis.load_runs(str(tmp_path / "m.h5"))[0]
    mine_held = next(q for q in analysis.layer_quantities(run) if q.name == "loss_mine")
    assert (mine_held.units, mine_held.title) == ("nats", "a head's own loss")
    axes = _visible(analysis.plot_layer_dynamics(run))
    panel = next(ax for ax in axes if ax.get_ylabel() == mine_held.ylabel)
    assert any(np.allclose(ln.get_ydata(), [0.5, 0.25]) for ln in panel.get_lines())


# ---------------------------------------------------------------------- what each layer has learned
def test_representations_from_checkpoints_match_the_logged_probe(tmp_path):
    """The features come from the run's checkpoint through the engine's eval forward: the linear probe
    on them gives exactly what --probe-every logged at the last epoch; CKA of a run with itself is 1 on the
    diagonal; the figures draw a line per run and a cell per pair of blocks."""
    paths = analysis.make_small_runs(["glob", "predsim"], out_dir=tmp_path, epochs=1, num_layers=2, num_hidden=32)
    runs = analysis.load_runs(paths)
    feats = [analysis.layer_features(r) for r in runs]
    for run, f in zip(runs, feats):
        assert f.blocks == ("fc1", "fc2") and f.test[0].shape == (512, 32) and f.train[0].shape == (1024, 32)
        probes = analysis.linear_probes(f)
        assert probes == {b: float(run.layers[b]["probe_accuracy"][-1]) for b in f.blocks}
        assert all(1.0 <= d <= 32.0 for d in analysis.effective_dimensionality(f).values())
    same = analysis.cka_between(feats[0], feats[0])
    np.testing.assert_allclose(np.diag(same), 1.0)
    cross = analysis.cka_between(feats[0], feats[1])
    assert cross.shape == (2, 2) and np.all((cross > 0) & (cross < 1))
    fig = analysis.plot_representations(feats)
    assert [len(ax.get_lines()) for ax in _visible(fig)] == [2, 2, 2]
    assert len(analysis.plot_cka(feats[0], feats[1]).axes[0].texts) == 4


def test_save_figure_writes_with_the_mark_and_replaces_only_its_own(tmp_path):
    from bioplaus import files

    path = tmp_path / "sub" / "f.png"
    assert analysis.save_figure(plt.figure(), path) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files.PNG_MARK in path.read_bytes()
    analysis.save_figure(plt.figure(), path)  # its own: replaced
    (tmp_path / "mine.png").write_bytes(b"a user's file")
    with pytest.raises(files.PathError):
        analysis.save_figure(plt.figure(), tmp_path / "mine.png")
    assert (tmp_path / "mine.png").read_bytes() == b"a user's file"
    with pytest.raises(ValueError, match="png, .svg or .pdf"):
        analysis.save_figure(plt.figure(), tmp_path / "f.jpg")
    assert not (tmp_path / "f.jpg").exists()
