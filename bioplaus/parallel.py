"""Layer-parallel training: the network's stages on K processes (MPI ranks, one device each), all
training at once on consecutive mini-batches.

    mpiexec -n K python sims/run.py --parallel layers --variant predsim-bpf --model vgg8b ...

Under a local rule no error crosses a block, so a stage needs nothing from the stages after it.
Rank 0 reads and augments the batches and trains stage 0; stage r runs on rank r. At tick t, stage r
trains on batch t − r: it receives batch t − r from stage r − 1 (the blocks above, after their own
updates on batches < t − r and on t − r itself: exactly what the sequential loop would show it),
trains its blocks on it, and sends its output on. Activations and labels move downstream with
non-blocking sends into double buffers (a stage computes batch t while batch t + 1 arrives and
batch t − 1 leaves); nothing moves upstream. Every stage does the arithmetic of the sequential run,
on the same arrays, with the same random streams (keyed by block and epoch), so on the CPU, with the
same BLAS thread count per process, every logged number and every checkpoint array is bit-identical
to the sequential run (``tests/test_parallel.py``).

Rank 0 also runs the ordinary run loop (:mod:`bioplaus.runner`): it asks the other ranks, by
broadcast, to train or evaluate an epoch, gathers their blocks' statistics at the epoch's end (one
small message per rank), gathers their arrays for the probe and the checkpoint, and writes the
ordinary log and the ordinary checkpoint (keyed by block name: any K, or the sequential run, resumes
it). SIGINT/SIGTERM reach rank 0 (mpiexec forwards them to every rank; the others ignore them): it
stops the stream downstream, marks the log ``interrupted`` and tells every rank to exit with its
status. A rank that dies makes mpiexec end the others; the log keeps every completed epoch. Before
the pipeline has started, the ranks other than 0 ignore the signals from their first line, and rank 0
tells them how to end on every way out (:mod:`bioplaus.startup`, :func:`main_parallel`): a rank that
left before MPI was up, or before rank 0's first word, would leave the others waiting for ever.

On GPUs each rank takes device (local rank mod devices); arrays cross ranks through host buffers.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import numpy as np

from bioplaus import startup
from bioplaus.blocks import Block, Blocks, State
from bioplaus.budget import block_costs
from bioplaus.errors import MPI_INSTALL, sentence
from bioplaus.files import is_storage_failure
from bioplaus.runner import SIGNAL_HOOK, deferred_signals
from bioplaus.stage import Stage
from bioplaus.train import (
    TrainerBase,
    check_finite,
    epoch_result,
    eval_result,
    probe,
    values_to_host,
    whole_network,
)

TAG_X, TAG_Y = 11, 12
# SIGNAL_HOOK (tests only): "KIND@N" makes rank 0 send itself SIGTERM right after its N-th command KIND
# (train, eval, values, arrays, state) has gone out, the moment an interrupt could split an exchange
# between ranks (checked with the other settings: bioplaus.runner.check_environment).


# ------------------------------------------------------------------------------ splitting
def balanced_split(costs: Sequence[float], ranks: int) -> list[int]:
    """Block counts of ``ranks`` contiguous stages that minimise the largest stage's cost (exact,
    by dynamic programming over the split points; ties go to the earlier, smaller first stages)."""
    n = len(costs)
    if not 1 <= ranks <= n:
        raise ValueError(f"cannot split {n} blocks into {ranks} stages")
    prefix = np.concatenate([[0.0], np.cumsum(costs)])
    best = np.full((ranks + 1, n + 1), np.inf)
    cut = np.zeros((ranks + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for k in range(1, ranks + 1):
        for j in range(k, n - (ranks - k) + 1):
            for i in range(k - 1, j):
                value = max(best[k - 1, i], prefix[j] - prefix[i])
                if value < best[k, j]:
                    best[k, j], cut[k, j] = value, i
    sizes, j = [], n
    for k in range(ranks, 0, -1):
        i = int(cut[k, j])
        sizes.append(j - i)
        j = i
    return sizes[::-1]


def plan(spec, cfg, ranks: int, stages: Sequence[int] | None = None) -> tuple[list[int], list[float]]:
    """(blocks per stage, estimated cost per block): ``stages`` as given, or balanced over ``ranks``."""
    from bioplaus.rules import compose

    costs = block_costs(spec, compose(cfg), cfg.batch_size, cfg.target_proj_size)
    if stages:
        if len(stages) != ranks:
            raise ValueError(f"--stages gives {len(stages)} stages but there are {ranks} ranks")
        if sum(stages) != len(spec.blocks) or min(stages) < 1:
            raise ValueError(f"--stages {','.join(map(str, stages))} does not split the {len(spec.blocks)} blocks of "
                             f"{cfg.model} ({', '.join(b.name for b in spec.blocks)}) into parts of one or more")
        return list(stages), costs
    if ranks > len(spec.blocks):
        n = len(spec.blocks)
        raise ValueError(f"{ranks} ranks are more than the {n} block{'s' if n != 1 else ''} of {cfg.model}: each "
                         "rank trains at least one block")
    return balanced_split(costs, ranks), costs


def describe_split(spec, sizes: Sequence[int], costs: Sequence[float]) -> str:
    """The split, each stage's share of the estimated work, and the ideal speedup (sum / max)."""
    total = sum(costs) or 1.0
    lines, first, loads = [], 0, []
    for r, n in enumerate(sizes):
        names = [b.name for b in spec.blocks[first:first + n]]
        load = sum(costs[first:first + n])
        loads.append(load)
        extra = " + output layer" if r == len(sizes) - 1 else ""
        lines.append(f"  rank {r}: {', '.join(names)}{extra}   {100 * load / total:5.1f} % of the work")
        first += n
    lines.append(f"ideal speedup over one process: {total / max(loads):.2f}x on {len(sizes)} ranks "
                 "(sum of the stages' work / the largest stage's; communication not counted)")
    return "\n".join(lines)


def bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    out, first = [], 0
    for n in sizes:
        out.append((first, first + n))
        first += n
    return out


# ------------------------------------------------------------------------------ links between stages
class Sender:
    """Sends (o, y) downstream with non-blocking sends; at most two batches in flight (double buffer)."""

    def __init__(self, comm, dest: int) -> None:
        self.comm, self.dest = comm, dest
        self.pending: list = []  # (requests, buffers kept alive until sent)

    def send(self, backend, o, y) -> None:
        x = np.ascontiguousarray(backend.to_host(o), dtype=np.float32).reshape(-1)
        labels = np.ascontiguousarray(backend.to_host(y), dtype=np.int64)
        while len(self.pending) >= 2:
            self._wait_oldest()
        reqs = [self.comm.Isend(x, self.dest, TAG_X), self.comm.Isend(labels, self.dest, TAG_Y)]
        self.pending.append((reqs, (x, labels)))

    def stop(self) -> None:
        """An empty batch: the stream ends early (an interrupt)."""
        self.send_raw(np.zeros(0, np.float32), np.zeros(0, np.int64))

    def send_raw(self, x, labels) -> None:
        while len(self.pending) >= 2:
            self._wait_oldest()
        reqs = [self.comm.Isend(x, self.dest, TAG_X), self.comm.Isend(labels, self.dest, TAG_Y)]
        self.pending.append((reqs, (x, labels)))

    def _wait_oldest(self) -> None:
        from mpi4py import MPI

        reqs, _ = self.pending.pop(0)
        MPI.Request.Waitall(reqs)

    def flush(self) -> None:
        while self.pending:
            self._wait_oldest()


class Receiver:
    """Receives (x, y) from upstream into two preallocated buffers; the next receive is posted before
    the current batch is handed out, so it arrives while this stage computes."""

    def __init__(self, comm, source: int, sample_shape: tuple, max_batch: int) -> None:
        self.comm, self.source = comm, source
        self.sample_shape = tuple(sample_shape)
        self.features = int(np.prod(sample_shape))
        self.buffers = [(np.empty(max_batch * self.features, np.float32), np.empty(max_batch, np.int64))
                        for _ in range(2)]
        self.posted = None
        self.turn = 0

    def _post(self):
        from mpi4py import MPI

        x, y = self.buffers[self.turn]
        self.turn ^= 1
        status_x, status_y = MPI.Status(), MPI.Status()
        reqs = [self.comm.Irecv(x, self.source, TAG_X), self.comm.Irecv(y, self.source, TAG_Y)]
        return reqs, (x, y), (status_x, status_y)

    def receive(self, backend, more: bool):
        """The next batch as device arrays, or None when the stream was stopped; posts the following
        receive first when ``more``."""
        from mpi4py import MPI

        if self.posted is None:
            self.posted = self._post()
        reqs, (x, y), statuses = self.posted
        for req, status in zip(reqs, statuses):
            req.Wait(status)
        n = statuses[1].Get_count(MPI.INT64_T)
        self.posted = self._post() if more and n > 0 else None
        if n == 0:
            return None
        xb = x[: n * self.features].reshape(n, *self.sample_shape)
        return backend.asarray(xb.copy()), backend.asarray(y[:n].copy())


def _sample_shape(spec, stage_first: int) -> tuple:
    """Per-sample shape of the input of block ``stage_first`` (the previous block's output, as its kind says)."""
    b = spec.blocks[stage_first - 1]
    return tuple(b.kind.output_shape(b))


# ------------------------------------------------------------------------------ rank 0
class PipelineTrainer(TrainerBase):
    """On rank 0: the trainer interface of :class:`bioplaus.train.Trainer` (what the run loop needs)
    over a pipeline whose stage 0 runs here and whose other stages run on the other ranks."""

    def __init__(self, cfg, backend, dataset, comm, sizes: Sequence[int]) -> None:
        self._setup(cfg, backend, dataset)
        self.comm = comm
        self.sizes = list(sizes)
        self.bounds = bounds(self.sizes)
        comm.bcast(("start", cfg.to_json(), self.sizes, tuple(dataset.spec.input_shape), dataset.spec.num_classes),
                   root=0)
        first, stop = self.bounds[0]
        self.stage = Stage(cfg, self.spec, backend, first, stop)
        self.sender = Sender(comm, 1)
        self.closed = False
        self._counts: dict[str, int] = {}
        command, _, nth = os.environ.get(SIGNAL_HOOK, "").partition("@")
        self._hook = (command, int(nth or 1)) if command else None

    # Every exchange with the other ranks (a command and its collective, or a command and the start
    # of its stream) runs whole under deferred_signals(): an interrupt between its two halves would
    # leave the other ranks waiting for the second one, and rank 0 in MPI_Finalize waiting for them.
    def _command(self, *message):
        self.comm.bcast(message, root=0)
        self._counts[message[0]] = self._counts.get(message[0], 0) + 1
        if self._hook == (message[0], self._counts[message[0]]):
            os.kill(os.getpid(), signal.SIGTERM)

    def _gather_values(self, train: bool) -> dict:
        mine = values_to_host(self.backend, self.stage.epoch_values(train))
        with deferred_signals():
            self._command("values", train)
            parts = self.comm.gather(mine, root=0)
        merged: dict = {}
        for part in parts:
            merged.update(part)
        return merged

    def _stream(self, command: tuple, begin: Callable, batches, step: Callable, on_batch=None, total=0) -> None:
        """Send ``command``, ``begin()`` here, then push the batches through stage 0 and on downstream;
        on any exception (an interrupt) once the command is out, the stream is stopped for the stages
        below before the exception goes on."""
        sent = False
        done = 0
        try:
            with deferred_signals():  # an interrupt held here is raised at its end, in the stream
                self._command(*command)
                sent = True
                begin()
            for x, y in batches:
                o = step(x, y)
                self.sender.send(self.backend, o, y)
                done += x.shape[0]
                if on_batch is not None:
                    on_batch(done, total)
            self.sender.flush()
        except BaseException:
            if sent:
                self.sender.stop()
                self.sender.flush()
            raise

    def train_epoch(self, on_batch=None) -> dict:
        epoch = self.epoch + 1
        start = time.perf_counter()
        count = -(-self.batches.num_samples // self.cfg.batch_size)
        self._stream(("train", epoch, count), lambda: self.stage.begin_epoch(epoch), self.batches.epoch(epoch),
                     self.stage.train_step, on_batch, self.batches.num_samples)
        host = self._gather_values(train=True)
        self.epoch = epoch
        series = self.series
        result = epoch_result(epoch, self.stage.lr, host, self.batches.num_samples, time.perf_counter() - start,
                              series)
        check_finite(result, series)
        return result

    def evaluate(self, split: str = "test") -> dict:
        from bioplaus.data import eval_batches

        size = max(self.cfg.batch_size, 256)
        n = len(self.dataset.split(split)[1])
        self._stream(("eval", -(-n // size)), self.stage.begin_eval,
                     eval_batches(self.dataset, self.backend, size, split=split), self.stage.eval_step)
        return eval_result(self._gather_values(train=False), n, self.series)

    def _gather_arrays(self) -> list[Blocks]:
        """Every stage's arrays, copied onto this rank (for the probe, which needs the whole network)."""
        with deferred_signals():
            self._command("arrays")
            parts = self.comm.gather(None, root=0)
        nets = [self.stage.net]
        dev = self.backend.asarray
        for (first, stop), part in zip(self.bounds[1:], parts[1:]):
            blocks = []
            for spec, arrays in zip(self.spec.blocks[first:stop], part["blocks"]):
                blocks.append(Block({}, spec=spec))
                blocks[-1].load(arrays, dev)
            out = None
            if part["out"] is not None:
                out = State({})
                out.load(part["out"], dev)
            nets.append(Blocks(blocks, first, out, self.stage.net.slope, self.stage.net.num_classes))
        return nets

    def probe(self) -> dict:
        x, y = self.probe_batch()
        return probe(whole_network(self._gather_arrays()), self.cfg, self.backend, x, y, self.probe_sets())

    def state_dict(self) -> dict:
        with deferred_signals():
            self._command("state")
            parts = self.comm.gather(None, root=0)
        out = {"epoch": np.asarray(self.epoch)}
        out.update(self.stage.state_dict())
        for part in parts[1:]:
            out.update(part)
        return out

    def load_state_dict(self, state: dict) -> None:
        from bioplaus.checkpoint import describe_mismatch

        problem = describe_mismatch(state, self.expected_state())
        if problem:
            raise ValueError(f"the checkpoint does not fit this network: {problem}")
        self._command("load", state)
        self.stage.load_state_dict(state)
        self.epoch = int(state["epoch"])

    def close(self, status: int) -> None:
        """Tell every rank to exit with ``status``."""
        if not self.closed:
            self.closed = True
            self._command("stop", status)


# ------------------------------------------------------------------------------ ranks 1..K-1
def worker(comm, backend_for: Callable[[str], object]) -> int:
    """The loop of a rank > 0: build its stage when rank 0 says so, then follow its commands.
    Returns the exit status rank 0 decided (2 when rank 0 refused the input before starting)."""
    from bioplaus.backend import keep_freed_memory
    from bioplaus.config import Config
    from bioplaus.models import build_spec

    for sig in (signal.SIGINT, signal.SIGTERM):  # rank 0 decides; mpiexec forwards signals to all ranks
        signal.signal(sig, signal.SIG_IGN)
    keep_freed_memory()  # as rank 0's runner.execute
    message = comm.bcast(None, root=0)
    if message[0] != "start":
        return int(message[1]) if len(message) > 1 else 2
    _, cfg_json, sizes, input_shape, num_classes = message
    cfg = Config.from_json(cfg_json)
    rank = comm.Get_rank()
    spec = build_spec(cfg, tuple(input_shape), num_classes)
    first, stop = bounds(sizes)[rank]
    backend = backend_for(cfg.device)
    stage = Stage(cfg, spec, backend, first, stop)
    last = rank == len(sizes) - 1
    receiver = Receiver(comm, rank - 1, _sample_shape(spec, first), max(cfg.batch_size, 256))
    sender = None if last else Sender(comm, rank + 1)
    try:
        while True:
            message = comm.bcast(None, root=0)
            command = message[0]
            if command in ("train", "eval"):
                count = message[-1]
                if command == "train":
                    stage.begin_epoch(message[1])
                else:
                    stage.begin_eval()
                step = stage.train_step if command == "train" else stage.eval_step
                for t in range(count):
                    batch = receiver.receive(backend, more=t + 1 < count)
                    if batch is None:  # rank 0 stopped the stream: pass it on
                        if sender is not None:
                            sender.stop()
                        break
                    o = step(*batch)
                    if sender is not None:
                        sender.send(backend, o, batch[1])
                if sender is not None:
                    sender.flush()
            elif command == "values":
                comm.gather(values_to_host(backend, stage.epoch_values(message[1])), root=0)
            elif command == "arrays":
                net = stage.net
                comm.gather({"blocks": [b.arrays(backend.to_host, opt=False) for b in net.blocks],
                             "out": net.out.arrays(backend.to_host, opt=False) if net.out else None}, root=0)
            elif command == "state":
                comm.gather(stage.state_dict(), root=0)
            elif command == "load":
                stage.load_state_dict(message[1])
            elif command in ("stop", "abort"):  # "abort": rank 0 stopped before it knew the pipeline had started
                return int(message[1])
    except Exception:  # noqa: BLE001 -- a bug on a worker: say where, and end every rank (no hang)
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
        return 1


# ------------------------------------------------------------------------------ the command line
def mpi_hint(run: str = "python sims/run.py") -> str:
    return f"install an MPI and mpi4py with {MPI_INSTALL} and launch it as mpiexec -n K {run} --parallel layers ..."



def describe_parallel(cfg, data_spec, ranks: int | None, stages: Sequence[int] | None) -> str:
    """``--describe --parallel layers --ranks K``: the split and its ideal speedup, without MPI."""
    from bioplaus.models import build_spec
    from bioplaus.rules import get_rule
    from bioplaus.runner import BadInput

    if get_rule(cfg.variant).global_error:
        raise BadInput(refusal(cfg.variant))
    spec = build_spec(cfg, tuple(data_spec.input_shape), data_spec.num_classes)
    ranks = ranks if ranks is not None else (len(stages) if stages else None)
    if ranks is None:
        raise BadInput("--describe --parallel layers needs --ranks K (or --stages)")
    try:
        sizes, costs = plan(spec, cfg, ranks, stages)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return describe_split(spec, sizes, costs)


def refusal(variant: str) -> str:
    return (f"--parallel layers cannot train {variant}: its error is computed at the top of the network, which "
            "locks every block until the batch has passed all the blocks above (and, in backprop, until the "
            "backward pass returns), so the stages cannot train at once; use a local rule such as predsim, "
            "predsim-bpf or drtp")


RANKS_ONLY_WITH_DESCRIBE = "--ranks only goes with --describe --parallel layers (mpiexec sets the ranks of a run)"


def main_parallel(ns, flags: dict, program=None, note: str | None = None, new_config=None) -> int:
    """``--parallel layers`` on every rank: rank 0 checks the input and runs the run loop over a
    :class:`PipelineTrainer`; the others are :func:`worker` s. Returns this rank's exit status.
    Every rank computes with ``--threads`` threads, by default the usable cores / the ranks on its node."""
    from bioplaus import runner
    from bioplaus import threads as threads_mod
    from bioplaus.program import DEFAULT
    from bioplaus.runner import BadInput

    program = program or DEFAULT
    if new_config is None:  # the command line hands down its own layering (flags > --config > recipe)
        def new_config(ns):
            return runner.new_config(flags, getattr(ns, "recipe", None))
    # MPI's start-up and the first collective are held whole (every rank must pass them, or the others
    # wait for ever); a signal that arrives meanwhile is taken when they are done, below.
    startup.hold_signals()
    try:
        try:
            comm, rank, size, local, here = startup.mpi_world()
        except ImportError:
            raise BadInput(f"--parallel layers needs MPI: {mpi_hint(program.run)}") from None
        if size < 2:
            raise BadInput(f"--parallel layers runs one stage per MPI rank, and this is one process; "
                           f"{mpi_hint(program.run)} with K of 2 or more")
    except BaseException:
        startup.release_signals()
        raise
    processes = here or threads_mod.local_processes()  # (no second collective: the launcher's count)
    if rank > 0:
        from bioplaus.backend import get_backend

        startup.release_signals()  # ignored here anyway (bioplaus.startup): rank 0 decides
        try:
            chosen = threads_mod.choose(getattr(ns, "threads", None), processes)
        except ValueError:
            chosen = None  # rank 0 refuses it and releases this rank
        with threads_mod.limit(chosen):
            return worker(comm, lambda device: get_backend(device, local))
    try:
        startup.release_signals()
    except KeyboardInterrupt:  # it came while MPI started: the other ranks wait for "start"
        comm.bcast(("abort", runner.EXIT_INTERRUPTED), root=0)
        raise
    if note:  # how the authors' flags were read, said once
        print(note, file=sys.stderr, flush=True)
    return _rank0(comm, size, local, ns, flags, runner, processes, program, new_config)


def _rank0(comm, size: int, local: int, ns, flags: dict, runner, processes: int = 1, program=None,
           new_config=None) -> int:
    from bioplaus.rules import get_rule
    from bioplaus.runner import BadInput

    trainer_box: list = []
    stages = getattr(ns, "stages", None)

    def check(cfg) -> None:
        if get_rule(cfg.variant).global_error:
            raise BadInput(refusal(cfg.variant))

    def factory(cfg, backend, dataset):
        from bioplaus.models import build_spec

        check(cfg)
        spec = build_spec(cfg, dataset.spec.input_shape, dataset.spec.num_classes)
        try:
            sizes, _ = plan(spec, cfg, size, stages)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        trainer = PipelineTrainer(cfg, backend, dataset, comm, sizes)
        trainer_box.append(trainer)
        return trainer

    status = runner.EXIT_USAGE
    progress = not getattr(ns, "no_progress", False)
    try:
        try:
            if getattr(ns, "ranks", None) is not None:
                raise BadInput(RANKS_ONLY_WITH_DESCRIBE)
            runner.check_tensorboard(getattr(ns, "tensorboard", None))
            kwargs = {"threads": getattr(ns, "threads", None), "processes": processes, "program": program,
                      "progress": progress}
            if getattr(ns, "resume", None) is not None:
                for key in ("recipe", "out", "overwrite", "config", "config_from"):
                    if getattr(ns, key, None):
                        raise BadInput(f"--{key.replace('_', '-')} cannot be combined with --resume (the log holds "
                                       "the run's configuration)")
                prepared = runner.prepare_resume(ns.resume, flags, factory=factory, backend_index=local,
                                                 check_config=check,
                                                 keep_checkpoint=getattr(ns, "keep_checkpoint", None), **kwargs)
            else:
                layered = new_config(ns)  # the command line's layering (flags > --config > recipe), handed down
                check(layered.config)
                prepared = runner.prepare(layered.config, getattr(ns, "out", None), getattr(ns, "overwrite", False),
                                          recipe=layered.recipe, factory=factory, backend_index=local,
                                          schedule=layered.schedule,
                                          keep_checkpoint=getattr(ns, "keep_checkpoint", "last"), **kwargs)
            trainer = prepared.trainer
            prepared.device = f"{prepared.backend.device}, {size} ranks (layer-parallel)"
            prepared.notes.append("stages: " + "; ".join(
                f"rank {r}: {', '.join(b.name for b in trainer.spec.blocks[a:b])}"
                for r, (a, b) in enumerate(trainer.bounds)))
            with runner.tensorboard_hook(getattr(ns, "tensorboard", None), prepared.out) as on_epoch:
                result = runner.execute(prepared, progress=progress, echo=lambda line: print(line, flush=True),
                                        on_epoch=on_epoch)
            status = result.exit_code
        except BadInput as exc:
            print(f"error: {sentence(str(exc))}", file=sys.stderr, flush=True)
            status = runner.EXIT_USAGE
    except BaseException as exc:
        # Every way out tells the other ranks how to end: they wait for rank 0's word, and MPI's end
        # waits for them. An interrupt (before the run loop took over the signals) ends them with 130.
        ending = runner.EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) or startup.stopped() else (
            runner.EXIT_STORAGE if isinstance(exc, OSError) and is_storage_failure(exc) else 1)
        if not trainer_box:  # the workers wait for "start": release them
            comm.bcast(("abort", ending), root=0)
        else:
            trainer_box[0].close(ending)
        raise
    if trainer_box:
        trainer_box[0].close(status)
    else:
        comm.bcast(("abort", status), root=0)
    return status
