"""The sweep's scheduler: starts the plans on a pool, prints progress with the time left, stops
cleanly on Ctrl-C or SIGTERM and says how every run ended."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bioplaus.analysis import duration_text
from bioplaus.files import PathError
from bioplaus.sweep.runs import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_OK,
    RUN_EXIT_DIVERGED,
    RUN_EXIT_INTERRUPTED,
    RUN_EXIT_IO,
    Plan,
    SweepError,
    epochs_in_log,
    inspect,
    lock_held,
)

HEARTBEAT_S = 300.0  # a progress line at least this often while runs go on


def seconds_left(left: list[tuple[str, int]], costs: dict[str, list[float]], slots: int) -> float | None:
    """The time left of runs ``left`` = [(group, epochs still to train)], ``slots`` at a time, given
    measured seconds per epoch by group (a group with none measured takes the mean of all); None
    while nothing is measured."""
    todo = [(g, n) for g, n in left if n > 0]
    if not todo:
        return 0.0
    every = [c for cs in costs.values() for c in cs]
    if not every:
        return None
    fallback = sum(every) / len(every)
    work = sum(n * (sum(costs[g]) / len(costs[g]) if costs.get(g) else fallback) for g, n in todo)
    return work / max(1, min(slots, len(todo)))


# ---------------------------------------------------------------------- the scheduler
class Sweep:
    """Runs the plans on a pool; prints progress; handles signals."""

    def __init__(self, plans: list[Plan], pool, run_command: str | Sequence[str], out_dir: str, threads: int | None,
                 out=sys.stdout, launcher: Sequence[str] = (), run_flags: Sequence[str] = (),
                 report: str = "python sims/sweep.py --report") -> None:
        self.plans = plans
        self.pool = pool
        # how a run is started: [python, sims/run.py] or [python, -m, bioplaus, run] (a path alone: sims/run.py)
        self.run_command = [sys.executable, run_command] if isinstance(run_command, str) else list(run_command)
        self.report = report
        self.out_dir = out_dir
        self.threads = threads
        self.out = out
        self.launcher = list(launcher)  # e.g. mpiexec -n K: each run layer-parallel
        self.run_flags = list(run_flags)
        self.by_name = {p.spec.name: p for p in plans}
        self.queue = [p for p in plans if p.action in ("new", "resume", "extend")]
        self.waiting = [p for p in plans if p.action == "busy"]
        self.results: dict[str, dict[str, Any]] = {}
        self.running: set[str] = set()
        self.stop_signal: int | None = None
        self.signals = 0
        self.announced = False
        self.io_failure = False
        self.stop_file = os.path.join(out_dir, f".sweep-{uuid.uuid4().hex[:12]}.stop")
        self.last_line = 0.0
        self.cost: dict[str, list[float]] = {}  # group -> wall seconds per epoch of runs that ended here
        self.started: dict[str, float] = {}  # run -> time.monotonic() when this sweep started it

    # --- signals
    def _on_signal(self, signum, frame) -> None:
        # Only flags and kill() here: printing from a handler can collide with a print in progress.
        self.signals += 1
        if self.stop_signal is None:
            self.stop_signal = signum
            self.pool.interrupt(signal.SIGINT)
        else:
            self.pool.interrupt(signal.SIGKILL)

    def _announce_stop(self) -> None:
        self.announced = True
        self.say(f"sweep: {signal.Signals(self.stop_signal).name}: stopping; every run marks its log interrupted "
                 "(another Ctrl-C kills them at once)")
        if self.pool.mpi:  # the workers' runs are not our children: they watch this file
            with contextlib.suppress(OSError), open(self.stop_file, "w") as fh:
                fh.write("stop\n")

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    # --- the task of a run
    def task(self, plan: Plan) -> dict[str, Any]:
        spec = plan.spec
        argv = spec.new_argv() if plan.action == "new" else spec.resume_argv()
        threads = ["--threads", str(self.threads)] if self.threads else []  # each run sets its own pools
        # A run started directly holds its signals over its start-up (bioplaus.startup); one started by
        # mpiexec does not: mpiexec would inherit them held, and could not forward a stop to its ranks.
        return {"name": spec.name, "argv": [*self.launcher, *self.run_command, *argv, *threads, *self.run_flags],
                "env": {}, "console": spec.console, "cwd": os.getcwd(), "stop_file": self.stop_file,
                "hold_signals": not self.launcher}

    # --- progress
    def eta(self) -> float | None:
        """Seconds left: the epochs still to train × each run's seconds per epoch / the runs at a time.
        Seconds per epoch: measured on the runs of its recipe and setting that ended in this sweep, else
        on those running now (wall time since their start over the epochs they added), else on any run."""
        todo = [p for p in self.plans if p.spec.name not in self.results and p.action in
                ("new", "resume", "extend", "busy")]
        now = time.monotonic()
        live: dict[str, list[float]] = {}
        left: list[tuple[str, int]] = []
        for p in todo:
            done = p.epochs_done
            if p.spec.name in self.running:
                done = max(done, epochs_in_log(p.spec.path))
                if done > p.epochs_done and p.spec.name in self.started:
                    live.setdefault(p.spec.group, []).append((now - self.started[p.spec.name]) / (done - p.epochs_done))
            left.append((p.spec.group, max(0, p.spec.config.epochs - done)))
        costs = {g: self.cost.get(g) or live.get(g) or [] for g in {*self.cost, *live}}
        return seconds_left(left, costs, self.pool.slots)

    def progress(self) -> str:
        n = len(self.plans)
        ended = [p for p in self.plans if p.action in ("done", "diverged") or p.spec.name in self.results]
        failed = sum(1 for r in self.results.values() if r["rc"] not in (0, RUN_EXIT_DIVERGED, RUN_EXIT_INTERRUPTED))
        left = n - len(ended) - len(self.running)
        eta = self.eta()
        when = "estimating the time left" if eta is None else f"about {duration_text(eta)} left"
        extra = f" ({failed} failed)" if failed else ""
        wait = f" ({len(self.waiting)} written by another process)" if self.waiting else ""
        return f"{len(ended)}/{n} done{extra}, {len(self.running)} running, {left} left{wait}; {when}"

    def tick(self, event: str = "") -> None:
        """Print ``event`` with the progress line; with no event, a progress line now and then."""
        if event or time.monotonic() - self.last_line >= HEARTBEAT_S:
            self.last_line = time.monotonic()
            self.say(f"sweep: {event} | {self.progress()}" if event else f"sweep: {self.progress()}")

    # --- the loop
    def run(self) -> int:
        saved = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._loop()
        finally:
            for sig, old in saved.items():
                signal.signal(sig, old)
            with contextlib.suppress(OSError):
                os.unlink(self.stop_file)
            self.pool.close()
        return self.finish()

    def _loop(self) -> None:
        self.last_line = time.monotonic()
        self.say(f"sweep: {self.progress()}")
        next_look = 0.0
        while True:
            if self.stop_signal is not None and not self.announced:
                self._announce_stop()
            stopping = self.stop_signal is not None or self.io_failure
            while not stopping and self.queue and len(self.pool) < self.pool.slots:
                plan = self.queue.pop(0)
                try:
                    self.pool.start(self.task(plan))
                except (OSError, PathError) as exc:  # its .out became a link or a FIFO meanwhile, a full disk
                    self.results[plan.spec.name] = {"name": plan.spec.name, "rc": -1, "seconds": 0.0,
                                                    "tail": str(exc)}
                    self.tick(f"{plan.spec.name} failed to start: {exc}")
                    continue
                self.running.add(plan.spec.name)
                self.started[plan.spec.name] = time.monotonic()
                what = {"new": "start", "resume": "resume", "extend": "extend"}[plan.action]
                self.tick(f"{what} {plan.spec.name}" + (f" ({plan.detail})" if plan.detail else ""))
            if not stopping and self.waiting and time.monotonic() >= next_look:
                next_look = time.monotonic() + 2.0
                self._look_at_waiting()
            if not len(self.pool) and (stopping or (not self.queue and not self.waiting)):
                return
            for res in self.pool.finished(timeout=1.0 if len(self.pool) else 2.0):
                self._ended(res)
            self.tick()

    def _look_at_waiting(self) -> None:
        for plan in list(self.waiting):
            if lock_held(plan.spec.path):
                continue
            self.waiting.remove(plan)
            try:
                fresh = inspect(plan.spec)
            except SweepError as exc:
                self.results[plan.spec.name] = {"name": plan.spec.name, "rc": -1, "seconds": 0.0, "tail": str(exc)}
                continue
            self.by_name[plan.spec.name] = fresh
            self.plans[self.plans.index(plan)] = fresh
            if fresh.action in ("done", "diverged"):
                self.tick(f"{plan.spec.name} was finished by another process ({fresh.action})")
            elif fresh.action == "busy":
                self.waiting.append(fresh)
            else:
                self.queue.append(fresh)

    def _ended(self, res: dict[str, Any]) -> None:
        if self.stop_signal is not None and not self.announced:
            self._announce_stop()
        name, rc = res["name"], res["rc"]
        self.running.discard(name)
        plan = self.by_name[name]
        if rc == RUN_EXIT_INTERRUPTED and self.stop_signal is not None:
            self.tick(f"{name} interrupted after {duration_text(res['seconds'])}; it resumes next time")
            return  # not a result: it is still to do
        self.results[name] = res
        trained = max(0, epochs_in_log(plan.spec.path) - plan.epochs_done)
        console = plan.spec.console
        if rc == 0:
            if trained:
                self.cost.setdefault(plan.spec.group, []).append(res["seconds"] / trained)
            self.tick(f"done {name} ({duration_text(res['seconds'])})")
        elif rc == RUN_EXIT_DIVERGED:
            self.tick(f"{name} diverged: {res['tail']}")
        elif rc == RUN_EXIT_IO:
            self.io_failure = True
            self.tick(f"{name} hit an I/O failure: {res['tail']}; no new run starts (free space, then run the "
                      "same command again)")
        elif rc < 0:
            why = f"killed by {signal.Signals(-rc).name}" if -rc in signal.valid_signals() else res["tail"]
            self.tick(f"{name} failed: {why}; it resumes next time (output: {console})")
        else:
            self.tick(f"{name} failed with status {rc}: {res['tail']} (output: {console})")

    def finish(self) -> int:
        skipped = sum(1 for p in self.plans if p.action == "done" and p.spec.name not in self.results)
        completed = [n for n, r in self.results.items() if r["rc"] == 0]
        diverged = [p.spec.name for p in self.plans if p.action == "diverged"] + [
            n for n, r in self.results.items() if r["rc"] == RUN_EXIT_DIVERGED]
        failed = {n: r for n, r in self.results.items() if r["rc"] not in (0, RUN_EXIT_DIVERGED)}
        unfinished = [p.spec.name for p in self.plans if p.action in ("new", "resume", "extend", "busy")
                      and p.spec.name not in self.results]
        parts = [f"{len(completed)} completed now"] + ([f"{skipped} already complete"] if skipped else [])
        if diverged:
            parts.append(f"{len(diverged)} diverged ({', '.join(diverged)})")
        if failed:
            parts.append(f"{len(failed)} failed ({', '.join(failed)})")
        if unfinished:
            parts.append(f"{len(unfinished)} not finished")
        self.say("sweep: " + ", ".join(parts) + f"; report: {self.report} {self.out_dir}")
        if self.stop_signal is not None:
            self.say("sweep: interrupted; run the same command again to carry on")
            return EXIT_INTERRUPTED
        if self.io_failure:
            return EXIT_IO
        if failed or unfinished:
            return EXIT_FAILED
        return EXIT_OK
