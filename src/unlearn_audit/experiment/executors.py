"""Cells on a cluster: the ``ray`` and ``slurm`` executors of an experiment.

    executor: {kind: ray, address: auto, gpus_per_cell: 1, cpus_per_cell: 4, max_workers: 8}
    executor: {kind: slurm, partition: gpu, gpus_per_cell: 1, time_min: 240, array_parallelism: 32}

The driver (``unlearn-audit run`` on a login node, or anywhere that sees the run directory)
hands out two kinds of task and computes nothing itself:

* one **shared task** per (target, seed): the original's and the oracle's evaluation and the
  attacks' references, sealed into ``shared/`` (``runner._shared_work``);
* one **cell task** per cell: it unlearns, then reads its (target, seed)'s shared file (a cell
  never recomputes the shared work), evaluates, attacks and seals ``cells/<method>-<key>.json``
  (``runner._run_cell``). On Ray a cell may start once its shared task *runs*, unlearning while
  the shared work is computed and waiting for its file before the attacks (every task the
  driver submits has a slot, and the shared task was submitted first, so the wait ends); on
  Slurm a cell is submitted once the shared file exists (a queued shared job could otherwise
  wait behind cells that hold the allocation).

Workers load subjects from the organism cache (the driver trains organism and oracles into it
before the first task) or from the model's hub name or path, and write only their own sealed
files, in the same format as a local run: a local resume of a cluster run and a cluster resume
of a local run both just work. A Ray worker keeps its loaded subjects for its next cells.

Faults: a task whose worker dies, or whose job fails or is pre-empted, is submitted again up
to ``retries`` times, and the cell counts as failed after that (the last error in
``status.json`` and in the results' ``failed``); a cell whose method raises an
:class:`~unlearn_audit.errors.UnlearnAuditError` (a diverging grid point) fails at once, as it
does locally: running it again would fail the same way. A killed driver loses nothing stored:
``run`` again skips the finished cells and submits the rest.

Ray and submitit are optional extras (``pip install 'unlearn-audit[ray]'`` / ``[slurm]``),
imported only here and only when asked for.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import progress
from ..errors import UnlearnAuditError, UserInputError
from .checkpoint import cell_path, read_sealed, shared_key, shared_path
from .config import Cell, Experiment, expand, threads_used
from .status import RunStatus, shared_name

# environment a worker needs to find what the driver sees (the organism cache, offline hubs)
_FORWARDED_ENV = ("UNLEARN_AUDIT_", "HF_", "TRANSFORMERS_", "TOKENIZERS_PARALLELISM")


@dataclass
class Task:
    """One unit of work handed to the cluster: a (target, seed)'s shared work or one cell."""

    name: str                    # shown in logs and status.json
    fn: Any                      # shared_task or cell_task
    args: tuple
    group: tuple[str, int]       # (target, seed): the shared work this task computes, or its cell needs
    cell: Cell | None = None     # None for a shared task
    attempts: int = 0
    handle: Any = None
    submitted: float = 0.0       # perf_counter at the last submission


class WorkerLost(Exception):
    """A task that did not return: its worker died, its job failed or was pre-empted."""


# ----------------------------------------------------------------------------- the driver

def run_on_cluster(out: Path, exp: Experiment, cells: list[Cell], done: dict[str, dict], failed: dict[str, dict],
                   computed: list[str], status: RunStatus) -> dict[tuple[str, int], dict]:
    """Run every unfinished cell (and the shared work) on ``exp.executor``; fills ``done``,
    ``failed`` and ``computed`` as :func:`runner._run_here` does and returns the shared work."""
    from .runner import failure

    cfg = exp.executor
    # workers compute with the driver's thread count: it is part of every key
    exp = exp.model_copy(update={"threads": threads_used(exp)})
    doc = exp.model_dump(mode="json")
    shared: dict[tuple[str, int], dict] = {}
    waiting: list[Task] = []
    for target in exp.targets:
        for seed in exp.seeds:
            group = (target, seed)
            stored, _ = _read_shared(out, exp, target, seed)
            if stored is not None:
                shared[group] = stored
                status.shared_task(target, seed, "done")
            else:
                waiting.append(Task(f"shared work of {shared_name(target, seed)}", shared_task,
                                    (str(out), doc, target, seed), group))
                status.shared_task(target, seed, "pending")
            mine = [c for c in cells if (c.target, c.seed) == group and c.key not in done]
            waiting += [Task(c.setting, cell_task, (str(out), doc, c.key, False), group, cell=c)
                        for c in sorted(mine, key=expected_cost, reverse=True)]
    todo = sum(1 for t in waiting if t.cell is not None)
    if not todo:
        return shared
    pool = make_pool(cfg, exp, out)
    ready_shared = set(shared)        # (target, seed)s whose shared file exists
    started_shared: set[tuple[str, int]] = set()  # shared tasks submitted: their cells may start early on Ray
    failed_shared: set[tuple[str, int]] = set()
    early = getattr(pool, "early_cells", False)
    running: list[Task] = []
    progress.log(f"{cfg.kind} executor: {todo} cells on up to {pool.capacity} workers")
    try:
        with progress.bar(f"cells on {cfg.kind}", len(cells)) as overall:
            overall.advance(len(done))
            while waiting or running:
                while True:  # a second pass: cells whose shared task this pass just started
                    ready = [t for t in waiting if t.cell is None or t.group in ready_shared
                             or (early and t.group in started_shared)]
                    room = pool.capacity - len(running)
                    if not ready or room <= 0:
                        break
                    batch = ready[:room]
                    for t in batch:
                        waiting.remove(t)
                        t.attempts += 1
                        t.submitted = time.perf_counter()
                        _mark(status, t, "running")
                        if t.cell is None:
                            started_shared.add(t.group)
                        else:  # a cell that starts before its shared file exists waits for it
                            t.args = (*t.args[:3], t.group not in ready_shared)
                    pool.submit(batch)
                    running += batch
                if not running:
                    stuck = ", ".join(t.name for t in waiting[:3])
                    raise UnlearnAuditError(f"cells wait on shared work that failed ({stuck}); see status.json")
                for t in pool.wait(running):
                    running.remove(t)
                    try:
                        result = pool.outcome(t)
                    except WorkerLost as e:
                        why = " ".join(str(e).split())[:500]
                        if t.cell is not None and t.group in failed_shared:  # cancelled by the driver
                            result = {"error": "its shared work failed"}
                        elif t.attempts <= cfg.retries:
                            progress.warn(f"{progress.plain(t.name)}: {progress.plain(why)}; submitting it again "
                                          f"(attempt {t.attempts + 1} of {cfg.retries + 1})")
                            _mark(status, t, "pending", error=why)
                            waiting.insert(0, t)
                            continue
                        else:
                            result = {"error": f"failed {t.attempts} times; last: {why}"}
                    if t.cell is not None and t.group in failed_shared:
                        result = {"error": "its shared work failed"}
                    worker = f"{result.get('host')}:{result.get('pid')}" if "pid" in result else None
                    took = round(time.perf_counter() - t.submitted, 2)  # submitted to returned, as the driver saw it
                    if t.cell is None:
                        stored = _read_shared(out, exp, *t.group)[0] if "error" not in result else None
                        if stored is None:
                            _mark(status, t, "failed", error=result.get("error", "no shared file was written"))
                            failed_shared.add(t.group)
                            pool.cancel([c for c in running if c.group == t.group])
                            for c in [w for w in waiting if w.group == t.group]:
                                waiting.remove(c)
                                failed[c.cell.key] = failure(c.cell, f"its shared work failed: {result.get('error')}")
                                status.cell(c.cell.key, "failed", error=failed[c.cell.key]["error"])
                                overall.advance()
                            continue
                        shared[t.group] = stored
                        ready_shared.add(t.group)
                        _mark(status, t, "done", worker=worker, seconds=took)
                        continue
                    stored, why = read_sealed(cell_path(out, t.cell), t.cell.key) if "error" not in result else (None, None)
                    if stored is None:
                        error = result.get("error") or f"the worker returned but its cell file is {why or 'missing'}"
                        failed[t.cell.key] = failure(t.cell, error)
                        status.cell(t.cell.key, "failed", error=error, worker=worker)
                        progress.warn(f"cell {progress.plain(t.name)} (seed {t.cell.seed}) failed: "
                                      f"{progress.plain(error)}; the other cells go on")
                    else:
                        done[t.cell.key] = stored
                        computed.append(t.cell.setting)
                        status.cell(t.cell.key, "done", worker=worker, seconds=took)
                    counts = status.counts()
                    overall.advance(info=f"running {counts['running']}, failed {counts['failed']}")
    finally:
        pool.close(running)
    for target in exp.targets:  # the shared work of (target, seed)s whose cells were all finished
        for seed in exp.seeds:
            if (target, seed) not in shared:
                stored, _ = _read_shared(out, exp, target, seed)
                if stored is None:
                    raise UnlearnAuditError(f"the shared work of {shared_name(target, seed)} failed; see {status.path}")
                shared[(target, seed)] = stored
    return shared


def expected_cost(cell: Cell) -> float:
    """A cell's relative cost for longest-first submission (Graham 1969: the longest cells
    first, so that the run does not end on one long cell with the other workers idle): its
    method's optimiser steps, twice for a method that also draws a retain batch each step.
    Methods without steps count 0 and go last; ties keep the study's order."""
    from ..methods import get_method

    steps = cell.params.get("steps", 0) or 0
    return steps * (2 if getattr(get_method(cell.method), "uses_retain", False) else 1)


def _mark(status: RunStatus, t: Task, state: str, **info) -> None:
    if t.cell is None:
        status.shared_task(*t.group, state, **info)
    else:
        status.cell(t.cell.key, state, **info)


def _read_shared(out: Path, exp: Experiment, target: str, seed: int) -> tuple[dict | None, str | None]:
    """The sealed shared work of (target, seed), or None and why not (missing, damaged, stale)."""
    return read_sealed(shared_path(out, exp, target, seed), shared_key(exp, target, seed))


# ----------------------------------------------------------------------------- the workers

_LOADED: dict[str, Any] = {}  # config hash -> Subjects: a Ray worker's models, kept for its next cells


def _worker(exp_doc: dict):
    """The experiment and its subjects in this worker, set up as the driver's run would be."""
    from ..subject.subject import set_threads
    from .config import config_hash
    from .runner import Subjects

    exp = Experiment.model_validate(exp_doc)
    set_threads(exp.threads)
    key = config_hash(exp)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = Subjects(exp)
    return exp, _LOADED[key]


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def shared_task(out: str, exp_doc: dict, target: str, seed: int) -> dict:
    """A worker's shared task: compute and seal the shared work of (target, seed) unless stored."""
    from ..subject.residency import off_device_at_rest
    from .runner import _shared_work

    exp, subjects = _worker(exp_doc)
    try:
        with off_device_at_rest():
            _shared_work(Path(out), exp, subjects, target, seed)
    except UnlearnAuditError as e:  # a bad model path, say: every retry would fail the same way
        return {**_me(), "error": str(e)}
    return _me()


def cell_task(out: str, exp_doc: dict, key: str, wait: bool = False) -> dict:
    """A worker's cell task: unlearn, evaluate and attack one cell on the stored shared work,
    and seal its file. ``{"error": ...}`` for a cell whose method failed (not retried).
    ``wait``: the shared work is being computed elsewhere; unlearn first, then wait for its file."""
    from ..subject.residency import off_device_at_rest
    from .runner import _run_cell

    exp, subjects = _worker(exp_doc)
    out_dir = Path(out)
    cell = next(c for c in expand(exp) if c.key == key)
    if read_sealed(cell_path(out_dir, cell), key)[0] is not None:  # a task of a killed driver finished it
        return _me()

    def stored_shared() -> dict:
        while True:
            doc, why = _read_shared(out_dir, exp, cell.target, cell.seed)
            if doc is not None or not wait:
                break
            time.sleep(0.2)  # the driver cancels this task if the shared work fails for good
        if doc is None:
            raise RuntimeError(f"the shared work of {shared_name(cell.target, cell.seed)} is {why or 'missing'}")
        return doc

    shared = stored_shared if wait else stored_shared()
    try:
        with off_device_at_rest():
            _run_cell(out_dir, exp, subjects, cell, shared, cell.setting)
    except UnlearnAuditError as e:
        return {**_me(), "error": str(e)}
    return _me()


# ----------------------------------------------------------------------------- the pools

def make_pool(cfg, exp: Experiment, out: Path):
    return {"ray": RayPool, "slurm": SlurmPool}[cfg.kind](cfg, exp, out)


def _extra_missing(module: str, extra: str, kind: str) -> UserInputError:
    return UserInputError(f"the {kind} executor needs {module}, which is not installed; "
                          f"pip install 'unlearn-audit[{extra}]' (or choose executor kind local)")


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}
    return {**env, "UNLEARN_AUDIT_PROGRESS": "0"}  # the driver shows progress; workers' warnings still come


class RayPool:
    """Tasks on a Ray cluster: ``address`` joins one (``auto``: the one ``ray start`` runs
    here); without it a local Ray is started for the run, and stopped after it. Each task asks
    for ``num_cpus=cpus_per_cell``, ``num_gpus=gpus_per_cell``; Ray's own retries are off, so
    the driver counts attempts."""

    def __init__(self, cfg, exp: Experiment, out: Path):
        try:
            import ray
        except ImportError:
            raise _extra_missing("ray", "ray", "ray") from None
        import logging

        self.ray = ray
        self.cpus = cfg.cpus_per_cell or exp.threads
        self.gpus = cfg.gpus_per_cell
        self._env = _worker_env()
        self.started = not ray.is_initialized()
        if self.started:
            if cfg.address:
                ray.init(address=cfg.address, logging_level=logging.WARNING, log_to_driver=True)
            else:  # logical CPUs: a cell asking for more than this machine has still runs
                workers = cfg.max_workers or max(1, (os.cpu_count() or 1) // self.cpus)
                ray.init(num_cpus=max(os.cpu_count() or 1, self.cpus * workers), include_dashboard=False,
                         logging_level=logging.WARNING, log_to_driver=True)
        have = ray.cluster_resources()
        if have.get("CPU", 0) < self.cpus or have.get("GPU", 0) < self.gpus:
            self.close([])
            raise UserInputError(f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; "
                                 f"a cell asks for {self.cpus} and {self.gpus:g} (executor cpus_per_cell, gpus_per_cell)")
        fit = int(have.get("CPU", 0) // self.cpus)
        if self.gpus:
            fit = min(fit, int(have.get("GPU", 0) // self.gpus))
        self.capacity = max(1, cfg.max_workers or fit)
        # cells may start while their shared task runs only when every submitted task has a slot
        # (more workers than the cluster holds could leave the shared task queued behind them)
        self.early_cells = self.capacity <= fit
        self._remote = None

    def submit(self, tasks: list[Task]) -> None:
        if self._remote is None:
            self._remote = self.ray.remote(_with_env)
        for t in tasks:  # named after the task: a worker's process title is ray::cell_task while it runs one
            t.handle = self._remote.options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0,
                                            name=t.fn.__name__).remote(self._env, t.fn, *t.args)

    def cancel(self, tasks: list[Task]) -> None:
        for t in tasks:
            self.ray.cancel(t.handle, force=True)

    def wait(self, running: list[Task]) -> list[Task]:
        by_ref = {t.handle: t for t in running}
        ready, _ = self.ray.wait(list(by_ref), num_returns=1)
        return [by_ref[r] for r in ready]

    def outcome(self, t: Task) -> dict:
        try:
            return self.ray.get(t.handle)
        except self.ray.exceptions.RayError as e:
            raise WorkerLost(f"{type(e).__name__}: {e}") from None

    def close(self, running: list[Task]) -> None:
        self.cancel(running)
        if self.started:
            self.ray.shutdown()


class SlurmPool:
    """Jobs through submitit: the tasks ready at one moment go out as one job array (at most
    ``array_parallelism`` running at once), each job with ``cpus_per_cell`` CPUs,
    ``gpus_per_cell`` GPUs, ``time_min`` minutes and ``mem_gb``; job files and logs under
    ``RUN_DIR/slurm/``. ``cluster: local`` runs each job as a local process (submitit's
    LocalExecutor), for tests and a workstation."""

    POLL_S = {"local": 0.2, "slurm": 10.0}

    def __init__(self, cfg, exp: Experiment, out: Path):
        try:
            import submitit
        except ImportError:
            raise _extra_missing("submitit", "slurm", "slurm") from None
        self.submitit = submitit
        self.executor = submitit.AutoExecutor(folder=out / "slurm" / "%j", cluster=cfg.cluster)
        cluster = self.executor.cluster
        if cluster not in ("slurm", "local"):
            raise UserInputError(f"the slurm executor found no Slurm here (submitit chose {cluster!r}); run the "
                                 "driver where sbatch works, or set executor cluster: local to run jobs as local processes")
        params: dict[str, Any] = {"timeout_min": cfg.time_min, "cpus_per_task": cfg.cpus_per_cell or exp.threads,
                                  "name": f"unlearn-audit-{exp.name}"[:64]}
        if cfg.gpus_per_cell:
            params["gpus_per_node"] = int(cfg.gpus_per_cell)
        if cfg.mem_gb:
            params["mem_gb"] = cfg.mem_gb
        if cluster == "slurm":
            params["slurm_array_parallelism"] = cfg.array_parallelism
            if cfg.partition:
                params["slurm_partition"] = cfg.partition
            params.update({f"slurm_{k}": v for k, v in cfg.slurm_args.items()})
        self.executor.update_parameters(**params)
        self.poll_s = self.POLL_S[cluster]
        self.capacity = cfg.max_workers or cfg.array_parallelism
        self._env = _worker_env()

    def submit(self, tasks: list[Task]) -> None:
        with self.executor.batch():
            jobs = [self.executor.submit(_with_env, self._env, t.fn, *t.args) for t in tasks]
        for t, job in zip(tasks, jobs, strict=True):
            t.handle = job

    def cancel(self, tasks: list[Task]) -> None:
        for t in tasks:
            t.handle.cancel(check=False)

    def wait(self, running: list[Task]) -> list[Task]:
        while True:
            finished = [t for t in running if t.handle.done()]
            if finished:
                return finished
            time.sleep(self.poll_s)

    def outcome(self, t: Task) -> dict:
        try:
            return t.handle.result()
        except (self.submitit.core.utils.FailedJobError, self.submitit.core.utils.UncompletedJobError) as e:
            raise WorkerLost(f"job {t.handle.job_id}: {type(e).__name__}: {e}") from None

    def close(self, running: list[Task]) -> None:
        self.cancel(running)


def _with_env(env: dict[str, str], fn, *args):
    """A worker's entry (a Ray task, a Slurm job): the driver's forwarded environment, then the task."""
    os.environ.update(env)
    return fn(*args)
