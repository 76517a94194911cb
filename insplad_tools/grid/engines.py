"""Engines: where trials run. Every engine runs :func:`insplad_tools.grid.trials.execute_trial`.

- :class:`LocalEngine` ``jobs=1``: in this process, one trial after another (nothing to install);
  ``jobs=N``: N worker processes (spawned, so CUDA and torch threads start clean).
- :class:`RayEngine`: each trial a Ray task with the grid file's resource requests (CPUs, GPUs,
  memory), on an existing cluster (``address``) or a local Ray; outputs come back to the driver
  packed, so only the dataset has to be on storage every node can read.

One interface: :meth:`Engine.submit` a task, :meth:`Engine.wait` for finished ones. Retrying,
marking done and merging are the runner's, identical for every engine.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import multiprocessing
from typing import Any

from insplad_tools.errors import InspladError
from insplad_tools.grid.trials import execute_trial

RAY_INSTALL = 'pip install "insplad[ray]"'


def _crash(exc: BaseException) -> dict[str, Any]:
    """The outcome of a trial whose worker died (killed, out of memory, node lost)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {"ok": False, "error": f"worker failed: {type(exc).__name__}: {text[:300]}", "log": str(exc)[:20000],
            "wall_s": 0.0, "host": None}


class Engine(abc.ABC):
    """Runs trial tasks; ``slots`` is how many run at once (for the queue and the ETA)."""

    name: str = "engine"
    slots: int = 1
    shared_output: bool = True  # workers write RUNS directly; else they return the folder packed

    @abc.abstractmethod
    def submit(self, task: dict[str, Any]) -> None:
        """Start (or queue) one task."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(task, outcome) of the tasks that finished, waiting up to ``timeout`` s for at least one."""

    def close(self, abort: bool = False) -> None:
        """Release workers; ``abort`` (the grid was interrupted) stops running trials too."""


class LocalEngine(Engine):
    """This machine: in-process (``jobs=1``) or a pool of ``jobs`` spawned processes."""

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        self.slots = max(1, jobs)
        self._queued: list[dict[str, Any]] = []
        self._futures: dict[cf.Future, dict[str, Any]] = {}
        self._pool = None
        if jobs > 1:
            self._pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, task: dict[str, Any]) -> None:
        if self._pool is None:
            self._queued.append(task)
        else:
            self._futures[self._pool.submit(execute_trial, task)] = task

    def wait(self, timeout: float) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        if self._pool is None:
            if not self._queued:
                return []
            task = self._queued.pop(0)
            return [(task, execute_trial(task))]
        done, _ = cf.wait(list(self._futures), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        finished = []
        for future in done:
            task = self._futures.pop(future)
            try:
                finished.append((task, future.result()))
            except Exception as exc:  # BrokenProcessPool: a worker was killed
                finished.append((task, _crash(exc)))
        return finished

    def close(self, abort: bool = False) -> None:
        if self._pool is None:
            return
        if abort:  # interrupted: stop the workers now; their trials resume from checkpoints on the next run
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
        self._pool.shutdown(wait=not abort, cancel_futures=True)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InspladError(f"--engine ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


class RayEngine(Engine):
    """Each trial a Ray task asking for the trial's resources; results are packed back to the driver.

    ``address`` None: the Ray already initialised in this process (tests: ``ray.init(num_cpus=2)``),
    else a new local one; ``"auto"`` or ``"ray://host:10001"``: an existing cluster.
    """

    name = "ray"
    shared_output = False

    def __init__(self, address: str | None, resources: list[Any]) -> None:
        ray = _import_ray()
        self._ray = ray
        self._owns = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, log_to_driver=False, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = address or "a new local Ray instance"
                raise InspladError(f"cannot connect to Ray at {where}: {str(exc).strip().splitlines()[0]}") from None
            self._owns = True
        total = ray.cluster_resources()
        cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
        slots = []
        for r in resources:
            if r.cpus > cpus or r.gpus > gpus:
                if self._owns:
                    ray.shutdown()
                raise InspladError(f"a trial asks for {r.cpus} CPU(s) and {r.gpus} GPU(s), but the Ray cluster has "
                                   f"{cpus:g} CPU(s) and {gpus:g} GPU(s); lower [resources] in the grid file")
            slots.append(int(min(cpus // r.cpus, gpus // r.gpus if r.gpus else cpus)))
        self.slots = max(1, min(slots) if slots else 1)
        self._remote = ray.remote(execute_trial)
        self._refs: dict[Any, dict[str, Any]] = {}

    def submit(self, task: dict[str, Any]) -> None:
        r = task["resources"]
        options: dict[str, Any] = {"num_cpus": r["cpus"], "num_gpus": r["gpus"], "max_retries": 0}
        if r["memory_gb"]:
            options["memory"] = int(r["memory_gb"] * (1 << 30))
        ref = self._remote.options(**options).remote({**task, "out": None})
        self._refs[ref] = task

    def wait(self, timeout: float) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        finished = []
        for ref in ready:
            task = self._refs.pop(ref)
            try:
                finished.append((task, self._ray.get(ref)))
            except Exception as exc:  # RayTaskError, WorkerCrashedError, node lost
                finished.append((task, _crash(exc)))
        return finished

    def close(self, abort: bool = False) -> None:
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)
        self._refs.clear()
        if self._owns:
            self._ray.shutdown()


def make_engine(name: str, *, jobs: int = 1, address: str | None = None, resources: list[Any] | None = None) -> Engine:
    """The engine called ``name`` (``local`` or ``ray``)."""
    if name == "local":
        return LocalEngine(jobs)
    if name == "ray":
        return RayEngine(address, resources or [])
    raise InspladError(f"unknown engine {name!r}; choose local or ray")
