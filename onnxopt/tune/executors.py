"""Where trials run: local processes (the default) or tasks on an existing Ray cluster.

Both give the study the same two calls: `submit(job)` and `wait()`, which blocks until at least
one trial ends and returns `(job, outcome)` pairs, the outcome being the trial's dict or
`{"state": "failed", "reason": ...}` when the trial raised or its process died. A dead worker
therefore costs one trial, recorded as failed, never the study.

Local trials each run in a fresh spawned process: an int8 trial that exhausts memory or crashes
ONNX Runtime takes down only itself, and each starts with a clean heap. On Ray, the model and
data files go into the object store once and every task reads them from there; tasks run with
`max_retries=0` so a lost worker shows up as a failed trial instead of a silent rerun.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
import tempfile
import traceback
from collections.abc import Callable
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any

from onnxopt.errors import ConfigError
from onnxopt.tune.trial import TrialJob, run_trial

FAILED = "failed"
TrialFunction = Callable[[TrialJob], dict[str, Any]]


def _failure(reason: str) -> dict[str, Any]:
    return {"state": FAILED, "reason": " ".join(reason.split())[:500]}


def _child(function: TrialFunction, job: TrialJob, conn) -> None:
    try:
        outcome = function(job)
    except BaseException as exc:  # noqa: BLE001 - everything a trial raises is its failure, reported to the study
        outcome = _failure(f"{type(exc).__name__}: {exc}")
        if os.environ.get("ONNXOPT_DEBUG"):
            outcome["traceback"] = traceback.format_exc()
    conn.send(outcome)
    conn.close()


class LocalExecutor:
    """Up to `workers` trials at once, each in its own spawned process on this machine."""

    name = "local"

    def __init__(self, workers: int = 1, function: TrialFunction = run_trial):
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.workers = workers
        self.function = function
        self._context = multiprocessing.get_context("spawn")
        self._running: dict[Any, tuple[TrialJob, Any, Any]] = {}

    @property
    def slots(self) -> int:
        return self.workers

    def submit(self, job: TrialJob) -> None:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_child, args=(self.function, job, send), daemon=True)
        process.start()
        send.close()
        self._running[receive] = (job, process, receive)

    def running(self) -> int:
        return len(self._running)

    def wait(self, timeout: float | None = None) -> list[tuple[TrialJob, dict[str, Any]]]:
        done = []
        # a connection turns readable when the trial sent its outcome, or at EOF when its process died
        for ready in wait_for(list(self._running), timeout=timeout):
            job, process, receive = self._running.pop(ready)
            try:
                outcome = receive.recv()
            except (EOFError, OSError):
                outcome = None
            process.join()
            receive.close()
            if outcome is None:
                outcome = _failure(f"the trial's process died (exit code {process.exitcode})")
            done.append((job, outcome))
        return done

    def close(self) -> list[TrialJob]:
        """Stop what still runs; returns those trials so the study can record them as failed."""
        left = []
        for job, process, receive in self._running.values():
            process.terminate()
            process.join(5)
            receive.close()
            left.append(job)
        self._running.clear()
        return left


# --- Ray -------------------------------------------------------------------------------------------


def _probe(address: str, timeout: float = 3.0) -> None:
    """Fail fast, before any work, when nothing answers at a host:port address."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        if address in ("auto", "local"):
            return
        raise ConfigError(f"--ray {address!r}: give the head's HOST:PORT (e.g. 127.0.0.1:6379), ray://HOST:PORT, or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with `ray start --head` or fix the address") from None


_MATERIALIZED: dict[str, dict[str, str]] = {}


def _materialize(names: list[str], blobs: tuple[bytes, ...]) -> dict[str, str]:
    """Write the shared files once per worker process, keyed by their content."""
    key = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blobs)).hexdigest()[:16]
    if key not in _MATERIALIZED:
        folder = Path(tempfile.mkdtemp(prefix=f"onnxopt-tune-{key}-"))
        files = {}
        for name, blob in zip(names, blobs):
            path = folder / name
            path.write_bytes(blob)
            files[name.split(".", 1)[0]] = str(path)
        _MATERIALIZED[key] = files
    return _MATERIALIZED[key]


def _ray_trial(function: TrialFunction, job: TrialJob, names: list[str], *blobs: bytes) -> dict[str, Any]:
    import ray

    job.files = _materialize(names, blobs)
    job.where = f"ray node {ray.get_runtime_context().get_node_id()[:8]}"
    return function(job)


class RayExecutor:
    """Trials as Ray tasks on an existing cluster (`ray start --head` somewhere, its address here)."""

    name = "ray"

    def __init__(self, address: str, files: dict[str, str], workers: int | None = None, function: TrialFunction = run_trial):
        try:
            import ray
        except ImportError:
            raise ConfigError("--ray needs Ray: pip install 'onnxopt[ray]'") from None
        _probe(address)
        self._ray = ray
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", include_dashboard=False, ignore_reinit_error=True)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ... for a bad cluster
            raise ConfigError(f"--ray {address}: could not join the cluster ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = max(1, workers or cpus)
        # file names keep their suffix: readers pick the format by it
        self._names = [f"{key}{Path(path).suffix}" for key, path in files.items()]
        self._blobs = [ray.put(Path(path).read_bytes()) for path in files.values()]
        self._task = ray.remote(num_cpus=1, max_retries=0)(_ray_trial)
        self.function = function
        self._running: dict[Any, TrialJob] = {}

    def submit(self, job: TrialJob) -> None:
        ref = self._task.remote(self.function, job, self._names, *self._blobs)
        self._running[ref] = job

    def running(self) -> int:
        return len(self._running)

    def wait(self, timeout: float | None = None) -> list[tuple[TrialJob, dict[str, Any]]]:
        ready, _ = self._ray.wait(list(self._running), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            job = self._running.pop(ref)
            try:
                outcome = self._ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - a task error or a lost worker: the trial failed
                outcome = _failure(f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}")
            done.append((job, outcome))
        return done

    def close(self) -> list[TrialJob]:
        left = list(self._running.values())
        for ref in self._running:
            self._ray.cancel(ref, force=True)
        self._running.clear()
        self._ray.shutdown()
        return left
