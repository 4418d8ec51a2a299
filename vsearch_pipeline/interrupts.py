"""Stopping a command-line run on Ctrl-C (SIGINT) or SIGTERM: promptly, at a safe point.

Why not Dagster's own handling: a job run in the main thread gets a SIGINT handler that raises
an exception wherever the main thread happens to be. Raised inside native code it can be lost
(during the embeddings step an onnxruntime/torch call swallowed it and the run went on to exit
0); raised inside an import it leaves a half-initialised module behind (numba: every retry of
the step then failed on it).

So the command runs the pipeline on a worker thread, where Dagster leaves signals alone; the main
thread only waits and, on a signal, records a stop request (SIGINT is blocked on the worker and
so in the threads and helper processes it starts, which would otherwise die of a Ctrl-C sent to
the whole process group). The pipeline honours it at safe
points: after each step (`STOP_HOOKS`) and between the batches of the long steps (their
progress callbacks). There it marks the Dagster run CANCELING and stops it, so Dagster records
the run as CANCELED.
What was written stays whole: artifacts are written under a temporary name and renamed into
place (core/storage.py) and DuckDB writes are transactions, so a re-run resumes from there.
A second signal ends the process at once, for a step that does not reach a safe point soon.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dagster import (
    DagsterExecutionInterruptedError,
    DagsterInstance,
    DagsterRunStatus,
    Failure,
    HookContext,
    failure_hook,
    success_hook,
)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
T = TypeVar("T")


class Interrupted(Exception):
    """The run stopped because of a signal; `exit_status` is the shell's 128 + its number."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class _StopRequest:
    """The first stop signal this process received (signals are process-wide, so is this)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def record(self, signum: int) -> None:
        self.signum = signum

    def clear(self) -> None:
        self.signum = None


STOP = _StopRequest()


def stop_step_if_requested(instance: DagsterInstance, run_id: str) -> None:
    """Inside a step: when a stop was requested, mark the run CANCELING and fail the step with
    a Failure that no retry policy retries (Dagster retries a step that raised its own
    interruption error, which is how three Ctrl-Cs once became three retries)."""
    if STOP.signum is not None:
        _mark_canceling(instance, run_id)
        raise Failure(description=str(Interrupted(STOP.signum)), allow_retries=False)


def stop_run_if_requested(instance: DagsterInstance, run_id: str) -> None:
    """Between steps: when a stop was requested, mark the run CANCELING and raise the error that
    Dagster treats as an interruption of the run (recorded as CANCELED)."""
    if STOP.signum is not None:
        _mark_canceling(instance, run_id)
        raise DagsterExecutionInterruptedError(str(Interrupted(STOP.signum)))


def _mark_canceling(instance: DagsterInstance, run_id: str) -> None:
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status == DagsterRunStatus.STARTED:
        instance.report_run_canceling(run, message=f"{Interrupted(STOP.signum)}: stopping")


def raise_if_stop_requested() -> None:
    """Between runs: stop here when a stop was requested."""
    if STOP.signum is not None:
        raise Interrupted(STOP.signum)


@success_hook(name="stop_if_requested_after_success")
def _stop_after_success(context: HookContext) -> None:
    stop_run_if_requested(context.instance, context.run_id)


@failure_hook(name="stop_if_requested_after_failure")
def _stop_after_failure(context: HookContext) -> None:
    stop_run_if_requested(context.instance, context.run_id)


STOP_HOOKS = {_stop_after_success, _stop_after_failure}
"""Hooks for jobs run by `run_stoppably`: each step ends with a check for a stop request."""


def run_stoppably(work: Callable[[], T], say: Callable[[str], None]) -> T:
    """`work()` on a worker thread, stopped at its next safe point by SIGINT or SIGTERM (see the
    module docstring); raises Interrupted when a signal came, else returns what `work` returned
    or raises what it raised. Call it from the main thread."""
    outcome: dict = {}

    def target() -> None:
        # Blocked here, SIGINT is blocked in every thread and helper process this thread starts:
        # Dagster's log tails, which a Ctrl-C to the whole process group would otherwise kill
        # mid-step (with a KeyboardInterrupt traceback). They end with the run. SIGTERM stays
        # open: Dagster stops them with it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            outcome["value"] = work()
        except BaseException as err:  # handed to the main thread, which re-raises it
            outcome["error"] = err

    def on_signal(signum: int, _frame: object) -> None:
        if STOP.signum is None:
            STOP.record(signum)
            say(f"{signal.Signals(signum).name}: stopping at the end of the current batch or "
                "step (again to stop at once)")
            return
        sys.stderr.write(f"vsearch: interrupted again ({signal.Signals(signum).name}): stopped "
                         "at once; run the same command again to resume\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    STOP.clear()
    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    worker = threading.Thread(target=target, name="vsearch-run")
    try:
        worker.start()
        worker.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if STOP.signum is not None:
        raise Interrupted(STOP.signum) from outcome.get("error")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@dataclass(frozen=True)
class Server:
    """A long-running command (a Dagster webserver, a daemon) and the file its output goes to."""

    name: str
    cmd: list[str]
    log: Path


def run_until_stopped(servers: list[Server], env: dict[str, str], grace_s: float = 30,
                      announce: Callable[[], bool] | None = None) -> tuple[Server, int] | None:
    """Run server commands side by side until one of them exits or this process gets SIGINT or
    SIGTERM; then stop them all and every process they started (code servers, runs), so that
    nothing is left listening. Returns None when stopped on request, else the server that
    exited first and its status. `announce` is called every half second until it returns True
    (it says the servers are ready once they answer).

    Each server runs in its own process group, so a signal reaches it only through here: it is
    sent SIGINT (Dagster's graceful shutdown, for its webserver, daemon and code servers alike),
    and whatever of the groups is still there `grace_s` seconds later, or at a second signal,
    is killed. One server ending on its own ends the others too: a webserver without its
    daemon (or the reverse) is the half-working state this is here to prevent."""
    processes = [_start(server, env) for server in servers]
    stop: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if stop:  # the second signal: at once
            for process in processes:
                _signal_group(process.pid, signal.SIGKILL)
        stop.append(signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        first = _wait_for_first(processes, stop, announce)
    finally:
        _stop_all(processes, grace_s)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return None if first is None else (servers[first], processes[first].returncode)


def _start(server: Server, env: dict[str, str]) -> subprocess.Popen:
    server.log.parent.mkdir(parents=True, exist_ok=True)
    with open(server.log, "ab") as out:
        return subprocess.Popen(server.cmd, env=env, start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def _wait_for_first(processes: list[subprocess.Popen], stop: list[int],
                    announce: Callable[[], bool] | None) -> int | None:
    """The index of the first process to exit, or None once a stop is requested."""
    announced = announce is None
    while not stop:
        ended = [i for i, process in enumerate(processes) if process.poll() is not None]
        if ended:
            return ended[0]
        if not announced:
            announced = announce()
        time.sleep(0.5)
    return None


def _stop_all(processes: list[subprocess.Popen], grace_s: float) -> None:
    """SIGINT to every group and `grace_s` seconds for the servers to exit, then what is left of
    each group (children that outlived their parent): SIGTERM, then SIGKILL."""
    for process in processes:
        _signal_group(process.pid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
    for process in processes:
        _stop_group(process.pid, grace_s)


def _stop_group(group: int, grace_s: float) -> None:
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
