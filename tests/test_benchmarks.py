"""The benchmark scripts' header (sims/benchmarks/machine.py): numpy's BLAS, its kernel and threads, and
a WARNING exactly when OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE is set; every script parses ``--help``; the
training benchmarks' step is the engine's own.

Fast (seconds): no benchmark runs and nothing is timed (two steps of a tiny mlp run). The environment's own values of the two
variables are left as they are; the subprocesses here set or unset them explicitly.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "sims" / "benchmarks"
SCRIPTS = ("bench_data.py", "bench_epoch.py", "bench_gpu.py", "bench_memory.py", "bench_ops.py", "bench_pipeline.py",
           "bench_train.py")
FORCING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def load_machine():
    spec = importlib.util.spec_from_file_location("bench_machine", BENCH / "machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def header_in_subprocess(**env_vars: str) -> list[str]:
    """The header as a fresh interpreter prints it, with the forcing variables unset except ``env_vars``."""
    env = {k: v for k, v in os.environ.items() if k not in FORCING}
    env.update(env_vars, OPENBLAS_NUM_THREADS="1")
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import machine; machine.print_header()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         check=True)
    return out.stdout.splitlines()


def test_every_script_is_listed_and_prints_the_header():
    assert sorted(p.name for p in BENCH.glob("bench_*.py")) == sorted(SCRIPTS)
    for name in SCRIPTS:
        source = (BENCH / name).read_text()
        assert "import machine" in source and "machine.print_header(" in source, name
        assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in source, f"{name}: the docstring's command"
        assert "Tests and CI leave the variables as they are" in source, name
    assert "bench_gpu.py" in (BENCH / "gpu_check.sh").read_text()


def test_header_has_blas_kernel_and_threads():
    pytest.importorskip("threadpoolctl")
    machine = load_machine()
    info = machine.blas_info()
    if info["blas"] is None:
        pytest.skip("threadpoolctl sees no BLAS library loaded")
    lines = machine.header_lines(info)
    text = "\n".join(lines)
    blas = next(line for line in lines if line.startswith("BLAS: "))
    assert f"{info['blas']} {info['blas_version']}" in blas
    assert f", {info['blas_threads']} thread" in blas
    assert isinstance(info["blas_threads"], int) and info["blas_threads"] >= 1
    if info["blas_kernel"]:  # OpenBLAS and BLIS report one; MKL does not
        assert f"kernel {info['blas_kernel']}" in blas
    import numpy as np

    assert f"numpy {np.__version__}" in text


def test_header_without_threadpoolctl(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails as if not installed
    machine = load_machine()
    info = machine.blas_info()
    assert info["blas"] is None and info["blas_threads"] is None
    assert any(line.startswith("BLAS: unknown, pip install threadpoolctl") for line in machine.header_lines(info))


@pytest.mark.parametrize("env_vars, warned", [
    ({}, False),
    ({"OPENBLAS_CORETYPE": "Haswell"}, True),
    ({"OPENBLAS_L2_SIZE": "1048576"}, True),
    ({"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"}, True),
], ids=["unset", "coretype", "l2-size", "both"])
def test_warning_exactly_when_forced(env_vars, warned):
    lines = header_in_subprocess(**env_vars)
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == (1 if warned else 0), lines
    assert any(line.startswith("BLAS: ") for line in lines), lines
    if warned:
        for name, value in env_vars.items():
            assert f"{name}={value}" in warnings[0]
        assert "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in warnings[0]


@pytest.mark.parametrize("script", (*SCRIPTS, "profile_step.py"))
def test_script_parses_help(script):
    out = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120,
                         check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "OPENBLAS_CORETYPE" in out.stdout


def test_a_benchmark_never_replaces_a_file_with_its_json(tmp_path):
    """``--json PATH`` is checked before the benchmark runs: an existing file (or link, or folder) is refused,
    as is a missing folder; the write itself creates the file exclusively."""
    import argparse

    machine = load_machine()
    mine = tmp_path / "mine.json"
    mine.write_text("my results")
    (tmp_path / "link.json").symlink_to(tmp_path / "nowhere")
    for bad in (mine, tmp_path / "link.json", tmp_path, tmp_path / "missing" / "x.json"):
        with pytest.raises(argparse.ArgumentTypeError):
            machine.json_path(str(bad))
    new = machine.json_path(str(tmp_path / "new.json"))
    machine.write_json(new, {"rows": [1, 2]})
    assert (tmp_path / "new.json").read_text().startswith("{")
    with pytest.raises(FileExistsError):
        machine.write_json(mine, {"rows": []})
    assert mine.read_text() == "my results"
    for script in ("bench_epoch", "bench_gpu", "bench_memory", "bench_ops", "bench_pipeline", "bench_train"):
        text = (BENCH / f"{script}.py").read_text()
        assert "machine.json_path" in text and "write_text" not in text, script


@pytest.mark.parametrize("script", ["bench_train", "bench_epoch", "bench_ops", "profile_step"])
def test_openblas_spin_is_set_before_numpy_loads(script):
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads it: a training benchmark must set it (as a
    run's process does) before its first ``import numpy``, or its BLAS threads spin after every GEMM and take a
    core from our element-wise threads (2-thread steps measured 1.2-1.5x slower so, 2026-12-03). Checked by
    importing the script in a fresh interpreter that notes the variable at the moment NumPy is first imported."""
    code = textwrap.dedent(f"""
        import os, sys
        seen = []

        class Watch:
            def find_spec(self, name, path=None, target=None):
                if name == "numpy" and not seen:
                    seen.append(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
                return None

        sys.meta_path.insert(0, Watch())
        sys.path.insert(0, {str(BENCH)!r})
        import {script}
        print(seen)
    """)
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                         cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    import bioplaus

    assert out.stdout.strip() == f"[{bioplaus.BLAS_SPIN!r}]"  # the run's own value, not a copy that could drift


def test_the_profile_times_every_op_of_a_step():
    """profile_step.py on a small mlp, one thread, one step: its table names the ops the step runs (exclusive
    times, so the dense layers' forward and backward and the optimizer each get a row) and the step's total,
    and taking its wrappers out puts the engine's own functions back."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(BENCH)!r})
        import profile_step
        import bioplaus.ops as ops
        original = ops.dense_forward
        assert profile_step.main(["--model", "mlp", "--variant", "predsim", "--threads", "1", "--repeat", "1",
                                  "--top", "40"]) == 0
        profile_step.use_wrappers(False)
        assert ops.dense_forward is original
        print("restored")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for row in ("dense.dense_forward", "dense.dense_backward", "optim.update (Adam)", "similarity.similarity_forward",
                "step, ops timed", "step, unwrapped (same run)", "restored"):
        assert row in text, row


def load_profile_step():
    spec = importlib.util.spec_from_file_location("profile_step_module", BENCH / "profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_twins_profiled_ops_go_to_the_part_that_encloses_them():
    """profile_step --twin: an aten op counts for the part its own name or its nearest enclosing op's name says
    (a multiply inside a convolution's backward is convolution, inside the optimizer's step Adam), one that no
    such op encloses for the losses and the rest; ours by the module of bioplaus.ops."""
    profile_step = load_profile_step()

    class Event:
        def __init__(self, name, parent=None):
            self.name, self.cpu_parent = name, parent

    conv_bwd = Event("autograd::engine::evaluate_function: ConvolutionBackward0")
    adam = Event("Optimizer.step#Adam.step")
    linear = Event("aten::linear")
    cases = {Event("aten::mul", conv_bwd): "convolution", Event("aten::mkldnn_convolution", Event("aten::conv2d")):
             "convolution", Event("aten::add_", adam): "Adam", Event("aten::addmm", linear): "dense",
             Event("aten::t", linear): "dense", Event("aten::native_batch_norm"): "batch norm + φ",
             Event("aten::leaky_relu"): "batch norm + φ", Event("aten::bernoulli_", Event("aten::dropout")): "dropout",
             Event("aten::max_pool2d_with_indices"): "pooling", Event("aten::mul"): profile_step.REST,
             Event("aten::mm", Event("aten::matmul")): profile_step.REST}
    for event, part in cases.items():
        assert profile_step.twin_part(event) == part, event.name
    assert profile_step.our_part("winograd.winograd_conv3x3_backward") == "convolution"
    assert profile_step.our_part("bn_act._over_samples") == "batch norm + φ"
    assert profile_step.our_part("optim.update (Adam)") == "Adam"
    assert profile_step.our_part("similarity.similarity_forward") == profile_step.REST
    assert profile_step.our_part("(not in an op)") == profile_step.REST
    assert set(profile_step.OUR_PARTS.values()) | {profile_step.REST} == set(profile_step.PARTS)


def test_the_profile_puts_the_twin_beside_ours():
    """profile_step --twin on a small mlp: the step by part, ours beside the twin's, with both totals."""
    pytest.importorskip("torch")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(BENCH)!r})
        import profile_step
        assert profile_step.main(["--model", "mlp", "--variant", "predsim", "--threads", "1", "--repeat", "1",
                                  "--twin"]) == 0
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("part of the step (ms)")))
    rows = {line[:24].strip(): line[24:].split() for line in lines[start + 1:] if line[:24].strip()}
    for part in ("dense", "Adam", "step, profiled", "step, unprofiled"):
        ours, twin = float(rows[part][0]), float(rows[part][1])
        assert ours > 0 and twin > 0, part  # an mlp step has dense layers and Adam on both sides


def test_the_benchmark_step_is_the_engines_step():
    """bench_train's (and so bench_gpu's) step is the engine's ``Stage.train_step``, not a copy: two steps of a
    Kolen-Pollack mlp leave every array as a stage stepped directly leaves it, its B included (the rule's
    after-update), and B moved. Run in a fresh interpreter (the script sets its threads' environment)."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(BENCH)!r})
        import numpy as np
        import bench_train
        from bioplaus.backend import NUMPY
        from bioplaus.config import Config
        from bioplaus.models import build_spec
        from bioplaus.stage import Stage

        cfg = Config(variant="kolen-pollack", num_layers=2, num_hidden=16, dropout=0.1, weight_decay=1e-3).resolve()
        spec = build_spec(cfg, (1, 28, 28), 10)
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((32, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 32)
        step = bench_train.bioplaus_step(cfg, spec, x, y)
        B0 = step.stage.state_dict()["blocks/fc2/feedback/B"]
        step(), step()
        stage = Stage(cfg.replace(lr=bench_train.LR), spec, NUMPY)
        stage.begin_epoch(1)
        stage.train_step(x, y), stage.train_step(x, y)
        ours, direct = step.stage.state_dict(), stage.state_dict()
        assert ours.keys() == direct.keys()
        assert all(np.array_equal(ours[k], direct[k]) for k in ours)
        assert not np.array_equal(ours["blocks/fc2/feedback/B"], B0) and step.adam_seconds > 0
        print("same")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                         cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "same", out.stderr[-2000:]


@pytest.mark.parametrize("variant", ["glob", "predsim", "predsim-bpf"])
def test_the_torch_twin_builds_and_steps_the_same_network(variant):
    """The twin of bench_train/bench_gpu builds its PyTorch layers from the engine's specs (dense and conv
    blocks, pooled decoders) with the engine's parameter count, and its step gives a finite loss."""
    torch = pytest.importorskip("torch")
    spec_ = importlib.util.spec_from_file_location("bench_torch_twin", BENCH / "torch_twin.py")
    twin_module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(twin_module)
    from bioplaus.config import Config
    from bioplaus.models import build_spec

    cfg = Config(variant=variant, model="vgg6b", feat_mult=0.0625, num_layers=1, num_hidden=16, dropout=0.1,
                 dim_in_decoder=64).resolve()
    spec = build_spec(cfg, (1, 28, 28), 10)
    twin = twin_module.TorchTwin(spec, variant, cfg.beta, cfg.dropout, 0.0, cfg.target_proj_size)
    forward = sum(p.numel() for blk in twin.blocks for name, p in blk.named_parameters()
                  if name.startswith(("enc.", "bn."))) + sum(p.numel() for p in twin.out.parameters())
    assert forward == spec.num_parameters
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    assert torch.isfinite(twin.step(x, y))
