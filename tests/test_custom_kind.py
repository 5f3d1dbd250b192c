"""A block kind defined outside the package (``tests/toy_kind.py``: a dense block with an identity shortcut,
its own module and one line of registration) is a block like the built-in ones: its backward is the
gradient, it trains through the ordinary run loop, its own statistic lands in the log, it splits across
stages (and MPI ranks) bit for bit, and the memory estimate and the split planner count it. Nothing in the
engine switches on a kind's name (a scan of the sources keeps it so).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import toy_kind
from helpers import numerical_grad, rel_error
from test_parallel import ENV, HAVE_MPI, MPIEXEC, ROOT
from test_resume import assert_same_run
from test_stage import assert_same_state, without_seconds

from bioplaus import kinds
from bioplaus.backend import NUMPY
from bioplaus.config import Config
from bioplaus.data import load_dataset
from bioplaus.describe import describe_model
from bioplaus.errors import ConfigError
from bioplaus.log import read_run
from bioplaus.models import BlockSpec, build_spec
from bioplaus.runner import run
from bioplaus.train import Trainer

SETTINGS = {"model": "toy-skip-mlp", "num_layers": 3, "num_hidden": 24, "dropout": 0.1, "seed": 4, "device": "cpu",
            "lr_decay_milestones": ()}
TOY_RUN = """import sys
sys.path.insert(0, {tests!r})
import toy_kind  # registers the kind and its model, as a researcher's own launcher would
from bioplaus.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_kind_is_registered_by_its_module_and_described():
    assert kinds.get_kind("toy-skip-dense") is toy_kind.SKIP
    cfg = Config(variant="predsim", **SETTINGS).resolve()  # the configuration accepts the registered model
    spec = build_spec(cfg, (1, 28, 28), 10)
    assert [b.kind for b in spec.blocks] == [kinds.DENSE, toy_kind.SKIP, toy_kind.SKIP]
    text = describe_model(cfg, (1, 28, 28), 10)
    assert "skip2  Dense 24->24 -> ReLU (+ identity) -> Dropout(0.1)   [600 params]" in text
    assert text.splitlines()[-1] == f"parameters: {spec.num_parameters}"
    assert spec.num_parameters == (784 * 24 + 24 + 48) + 2 * (24 * 24 + 24) + (24 * 10 + 10)
    with pytest.raises(ValueError, match="exists already"):
        kinds.register(toy_kind.SkipDense())


@pytest.mark.parametrize("need_dx", [True, False])
def test_its_backward_is_the_gradient_with_the_shortcut(need_dx):
    spec = BlockSpec("skip2", "toy-skip-dense", 5, 5, dec_features=5)
    rng = np.random.default_rng(0)
    p, running = toy_kind.SKIP.init(spec, False, rng)
    x = rng.standard_normal((4, 5))
    mask = np.where(rng.random((4, 5)) < 0.3, 0.0, 1 / 0.7)
    R = rng.standard_normal((4, 5))

    def objective():  # sum(o * R) through the shortcut, φ leaky, a dropout mask
        return np.sum(toy_kind.SKIP.forward(x, p, running, spec, True, (mask,), 0.01).o * R)

    fwd = toy_kind.SKIP.forward(x, p, running, spec, True, (mask,), 0.01)
    dh = toy_kind.SKIP.output_backward(R, fwd.cache)
    dx, grads = toy_kind.SKIP.backward((dh,), fwd.cache, spec, need_dx=need_dx)
    for key in ("W", "b"):
        assert rel_error(grads[key], numerical_grad(objective, p[key])) < 1e-6, key
    if need_dx:
        assert rel_error(dx, numerical_grad(objective, x)) < 1e-6
    else:
        assert dx is None


@pytest.fixture(scope="module")
def data():
    ds = load_dataset("fashion-mnist-mini")
    return dataclasses.replace(ds, x_train=ds.x_train[:192], y_train=ds.y_train[:192], x_test=ds.x_test[:128],
                               y_test=ds.y_test[:128])


@pytest.mark.parametrize("variant", ["predsim", "glob"])
def test_it_trains_logs_its_statistic_and_the_memory_estimate_counts_it(variant, tmp_path):
    result = run({"variant": variant, **SETTINGS, "epochs": 2, "probe_every": 1}, out=str(tmp_path / "toy.h5"))
    assert result.status == "completed"
    log = read_run(result.path)
    assert log.epochs["test_error"][-1] < 70  # chance: 90 %
    skip = log.layers["skip3"]
    assert set(skip) >= {"skip_gain", "bp_angle"} and "weight_norm" not in skip  # what the kind declares
    assert log.info["layers/skip3/skip_gain"][0] == "1" and np.all(np.isfinite(skip["skip_gain"]))
    assert "weight_norm" in log.layers["fc1"]  # the built-in dense block beside it keeps its own
    if variant == "predsim":
        assert np.all(np.isfinite(skip["train_loss_sim"])) and skip["test_error_pred"][-1] < 70


def test_it_splits_across_stages_bit_for_bit(data):
    from bioplaus.parallel import plan

    cfg = Config(variant="predsim-bpf", **SETTINGS, epochs=2, batch_size=64).resolve()
    results = {}
    for split in (None, [2, 1], [1, 2]):
        trainer = Trainer(cfg, NUMPY, data, stages=split)
        results[str(split)] = ([without_seconds(trainer.train_epoch()) for _ in range(2)], trainer.evaluate(),
                               {k: v.copy() for k, v in trainer.state_dict().items()})
    one = results["None"]
    for key in ("[2, 1]", "[1, 2]"):
        assert results[key][:2] == one[:2], key
        assert_same_state(results[key][2], one[2])
    assert one[0][0]["layers"]["skip2"]["skip_gain"] > 0
    sizes, costs = plan(build_spec(cfg, (1, 28, 28), 10), cfg, 2)  # the planner asks the kind for its cost
    assert sum(sizes) == 3 and all(c > 0 for c in costs)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MPI, reason="needs mpi4py and mpiexec (pip install '.[mpi]')")
def test_it_pipelines_over_two_ranks_bit_for_bit(tmp_path):
    """A launcher that imports the kind's module on every rank (as a researcher's own would) runs the
    ordinary command line; two ranks log what one process logs."""
    script = tmp_path / "toy_run.py"
    script.write_text(TOY_RUN.format(tests=str(Path(__file__).resolve().parent)))
    args = ["--variant", "predsim", "--model", "toy-skip-mlp", "--num-layers", "3", "--num-hidden", "24",
            "--dropout", "0.1", "--seed", "4", "--device", "cpu", "--no-progress", "--epochs", "1", "--probe-every",
            "1"]
    seq, pipe = str(tmp_path / "seq.h5"), str(tmp_path / "pipe.h5")
    for cmd, out in (([sys.executable, str(script)], seq),
                     ([MPIEXEC, "-n", "2", sys.executable, str(script), "--parallel", "layers"], pipe)):
        proc = subprocess.run([*cmd, *args, "--out", out], capture_output=True, text=True, env=ENV, cwd=ROOT,
                              timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 ranks (layer-parallel)" in read_run(pipe).attrs["device"]
    assert_same_run(seq, pipe)


def test_a_rule_that_needs_a_weight_refuses_a_kind_without_one():
    """A kind may have no weight a carrier could stand in for (weight_shape None): fa refuses it, in one
    sentence, before anything is allocated; a local rule and glob take it."""
    from bioplaus.rules import compose, init_blocks

    class NoWeight(toy_kind.SkipDense):
        def weight_shape(self, spec):
            return None

    spec = build_spec(Config(variant="fa", **SETTINGS).resolve(), (1, 28, 28), 10)
    spec = dataclasses.replace(spec, blocks=(*spec.blocks[:2], dataclasses.replace(spec.blocks[2], kind=NoWeight())))
    with pytest.raises(ConfigError, match="feedback alignment needs a weight to stand in for.*skip3"):
        init_blocks(spec, compose(Config(variant="fa").resolve()), 1, 8, 0.0, NUMPY)
    assert len(init_blocks(spec, compose(Config(variant="predsim").resolve()), 1, 8, 0.0, NUMPY).blocks) == 3


# ------------------------------------------------------------------------------ no switches on kinds
ENGINE = Path(__file__).resolve().parents[1]
SWITCH = re.compile(r"(?<!dtype\.)\bkind(\.name)?\s*(==|!=|\bin\b|\bnot in\b)|\bisinstance\([^)]*(Dense|Conv)Block\b")


def test_nothing_outside_the_kinds_switches_on_a_kind():
    """What varies between kinds is asked of the kind object: no ``kind ==``/``kind in`` (nor an isinstance
    test of a built-in kind) in the engine outside bioplaus/kinds/, nor in the benchmarks. The PyTorch twin
    (sims/benchmarks/torch_twin.py) is an independent implementation of the network, by design."""
    sources = [p for p in (*ENGINE.glob("bioplaus/**/*.py"), *ENGINE.glob("sims/**/*.py"))
               if "kinds" not in p.relative_to(ENGINE).parts and p.name != "torch_twin.py"]
    assert len(sources) > 30
    found = [f"{p.relative_to(ENGINE)}:{n}: {line.strip()}" for p in sources
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if SWITCH.search(line)]
    assert found == []
    assert SWITCH.search('if spec.kind == "conv":') and SWITCH.search("b.kind.name in ('dense',)")  # it can fail
    assert not SWITCH.search('if a.dtype.kind in "fiu":')
    with pytest.raises(TypeError, match="not compared with a name"):
        _ = kinds.CONV == "conv"  # and a stale comparison says so instead of silently never matching
