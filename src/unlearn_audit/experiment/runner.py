"""The matrix runner: run every cell of an experiment once, resumably, and assemble the results.

    run = run_experiment(load_experiment("study.yaml")[0])

Order of work, per target and seed: the *shared* work first (the original's and the oracle's
evaluation, and each attack's references, e.g. the relearning curves of original and oracle),
stored in ``shared/``; then each cell: unlearn, evaluate, run every attack on that one model,
store ``cells/<method>-<key>.json``. Subjects are loaded once per run and only when some work
is left. A killed run loses at most the cell in progress; run it again and it skips what is
stored (see :mod:`.checkpoint` for how files are checked). At the end ``results.json`` (the
nested document of ``docs/results.md``), ``results.sqlite`` (the tidy table) and ``report.html`` are
built from the stored files alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import progress
from ..errors import RunError, UnlearnAuditError
from ..files import prepare_output_dir
from ..results.schema import run_document, target_document
from ..results.store import write_store
from ..subject.residency import off_device_at_rest
from .checkpoint import (
    FORMAT,
    RunLock,
    begin,
    cell_path,
    check_manifest,
    clear,
    read_sealed,
    seal,
    shared_key,
    shared_path,
)
from .config import Cell, Experiment, config_hash, expand
from .rundir import write_json_atomic, write_results
from .status import RunStatus


@dataclass
class RunOutcome:
    """What :func:`run_experiment` did: the results document, the files, and which cells it
    computed now versus found finished."""

    results: dict
    paths: dict[str, Path]
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # setting -> why, for cells that raised

    def raise_if_failed(self) -> None:
        """A :class:`RunError` naming the failed cells (after their results were written)."""
        if self.failed:
            first, why = next(iter(self.failed.items()))
            total = len(self.failed) + len(self.computed) + len(self.reused)
            raise RunError(f"{len(self.failed)} of {total} cells failed ({first}: {why}); the results and the "
                           "report mark them; run again to retry them")


class Subjects:
    """The original model, and per target the target itself, its oracle and its evaluator,
    each made on first use and once per run."""

    def __init__(self, exp: Experiment):
        self.cfg = exp.subject
        self.agreement = exp.agreement
        self.utility = exp.utility
        self._original = None
        self._oracles: dict[str, object] = {}
        self._targets: dict[str, object] = {}
        self._evaluators: dict[str, object] = {}
        self.load_s = 0.0

    def _load(self, spec: str):
        from ..organisms import is_organism_spec, load_subject

        start = time.perf_counter()
        own = spec == self.cfg.model  # revision and model_args are the audited model's
        asked = self.cfg.model is not None and not is_organism_spec(spec)  # the model's and a model oracle's
        s = load_subject(spec, device=self.cfg.device, dtype=self.cfg.dtype,
                         trust_remote_code=self.cfg.trust_remote_code,
                         revision=self.cfg.revision if own else None, model_args=self.cfg.model_args if own else None,
                         prompt_template=self.cfg.prompt_template if asked else None,
                         system_prompt=self.cfg.system_prompt if asked else None)
        self.load_s += time.perf_counter() - start
        return s

    def load_all(self, targets: list[str]) -> None:
        """Load the original, every target and every oracle now: what can still fail at run
        time fails before a run that starts over deletes anything."""
        for spec in targets:
            self.target(spec)
            self.oracle(spec)

    @property
    def original(self):
        if self._original is None:
            spec = f"organism:{self.cfg.organism}@{self.cfg.seed}" if self.cfg.organism else self.cfg.model
            self._original = self._load(spec)
        return self._original

    def target(self, spec: str):
        from ..api import target_for

        if spec not in self._targets:
            self._targets[spec] = target_for(spec, self.original)
        return self._targets[spec]

    def evaluator(self, spec: str, reference_answers: dict | None = None):
        """The behavioural evaluation on a target (it holds the original's greedy answers;
        ``reference_answers``: those stored with the shared work, not generated again)."""
        from ..api import Evaluator

        if spec not in self._evaluators:
            self._evaluators[spec] = Evaluator(self.original, self.target(spec), agreement=self.agreement,
                                                utility=self.utility, reference_answers=reference_answers)
        return self._evaluators[spec]

    def oracle(self, spec: str):
        """``auto``: the organism's oracle for a world target (trained on first use); else the
        configured model, or None."""
        oracle = self.cfg.oracle
        if oracle is None or (oracle == "auto" and not (self.cfg.organism and spec.startswith("world:"))):
            return None
        name = (f"oracle:{self.cfg.organism}/{self.target(spec).name}@{self.cfg.seed}"
                if oracle == "auto" else oracle)
        if name not in self._oracles:
            self._oracles[name] = self._load(name)
        return self._oracles[name]


def attack_params(exp: Experiment, seed: int) -> dict:
    """Each attack's validated parameters under the cell's ``seed`` (objects, validated here once)."""
    from ..attacks import get_attack

    return {a: get_attack(a).params({**settings, "seed": seed}) for a, settings in exp.attacks.items()}


def _shared_work(out: Path, exp: Experiment, subjects: Subjects, target: str, seed: int) -> dict:
    """The stored shared work of (target, seed), computed and stored first when missing or damaged."""
    from ..api import references

    path = shared_path(out, exp, target, seed)
    doc, damage = read_sealed(path, shared_key(exp, target, seed))
    if doc is not None:
        return doc
    if damage:
        progress.warn(f"{path.name} is damaged ({damage}); recomputing it")
    progress.log(f"references on {progress.plain(target)} (seed {seed}): original and oracle")
    refs = references(subjects.original, subjects.target(target), list(exp.attacks), subjects.oracle(target),
                      attack_params(exp, seed), subjects.evaluator(target))
    doc = seal({"format": FORMAT, "key": shared_key(exp, target, seed), "target": target, "seed": seed, **refs})
    write_json_atomic(path, doc)
    return doc


def _run_cell(out: Path, exp: Experiment, subjects: Subjects, cell: Cell, shared, label: str) -> dict:
    """Unlearn, evaluate and attack one cell; store it; return the stored document. ``shared``:
    the (target, seed)'s shared work, or a function that waits for it and returns it (a cluster
    worker unlearns while another computes the shared work)."""
    from ..api import audit, unlearn

    start = time.perf_counter()
    target = subjects.target(cell.target)
    with progress.bar(f"cell {label}: {cell.setting}", 2 + len(exp.attacks)) as bar:
        bar.update(info="unlearning")
        unlearned = unlearn(subjects.original, target, cell.method, cell.method_params or cell.params)
        unlearn_s = time.perf_counter() - start
        if callable(shared):
            bar.update(info="waiting for the shared work")
            shared = shared()
        bar.advance(info="evaluating")
        res = audit(subjects.original, {cell.setting: unlearned}, target, list(exp.attacks),
                    subjects.oracle(cell.target), attack_params(exp, cell.seed),
                    evaluator=subjects.evaluator(cell.target, shared.get("reference_answers")),
                    shared=shared, on_attack=lambda name: bar.advance(info=name))
    doc = seal({"format": FORMAT, "key": cell.key, "config_hash": config_hash(exp),
                "cell": {"target": cell.target, "method": cell.method, "setting": cell.setting,
                         "params": cell.params, "seed": cell.seed},
                "result": res["methods"][cell.setting], "baselines": res["baselines"],
                "timings_s": {"unlearn": round(unlearn_s, 2), **res["timings_s"]},
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()})
    write_json_atomic(cell_path(out, cell), doc)
    progress.log(f"cell {label} {progress.plain(cell.setting)} (seed {cell.seed}) on {progress.plain(cell.target)}: "
                 f"{time.perf_counter() - start:.1f} s")
    return doc


def _run_here(out: Path, exp: Experiment, subjects: Subjects, cells: list[Cell], done: dict[str, dict],
              failed: dict[str, dict], computed: list[str], status: RunStatus) -> dict[tuple[str, int], dict]:
    """The ``local`` executor: every cell in this process, one after another, each (target,
    seed)'s shared work first. Fills ``done``, ``failed`` and ``computed``; returns the shared work."""
    shared: dict[tuple[str, int], dict] = {}
    reused = len(done)
    # between steps no model waits on the device: each step brings in the ones it uses
    with progress.bar("experiment", len(cells)) as overall, off_device_at_rest():
        overall.advance(reused, info=f"{reused} finished earlier" if reused else "")
        for target in exp.targets:
            for seed in exp.seeds:
                status.shared_task(target, seed, "running")
                shared[(target, seed)] = _shared_work(out, exp, subjects, target, seed)
                status.shared_task(target, seed, "done")
                for c in cells:
                    if c.target == target and c.seed == seed and c.key not in done:
                        label = f"{len(done) + len(failed) + 1}/{len(cells)}"
                        status.cell(c.key, "running")
                        try:
                            done[c.key] = _run_cell(out, exp, subjects, c, shared[(target, seed)], label)
                            computed.append(c.setting)
                            status.cell(c.key, "done")
                        except UnlearnAuditError as e:  # e.g. a diverging grid point: the rest goes on
                            failed[c.key] = failure(c, str(e))
                            status.cell(c.key, "failed", error=str(e))
                            progress.warn(f"cell {label} {progress.plain(c.setting)} (seed {c.seed}) failed: "
                                          f"{progress.plain(e)}; the other cells go on")
                        overall.advance(info=c.setting)
    return shared


def failure(cell: Cell, error: str) -> dict:
    """What ``results.json`` lists of a failed cell under its target's ``failed``."""
    return {"target": cell.target, "setting": cell.setting, "method": cell.method, "seed": cell.seed, "error": error}


def _finished_cells(out: Path, cells: list[Cell]) -> dict[str, dict]:
    """The intact stored cells by key; damaged ones are reported (and will be recomputed)."""
    done = {}
    for c in cells:
        doc, damage = read_sealed(cell_path(out, c), c.key)
        if doc is not None:
            done[c.key] = doc
        elif damage:
            progress.warn(f"cell {progress.plain(c.setting)} (seed {c.seed}): "
                         f"{cell_path(out, c).name} is damaged ({damage}); recomputing it")
    return done


def run_experiment(exp: Experiment, source_text: str | None = None, *, out: str | Path | None = None,
                   fresh: bool = False, on_change: str = "refuse",
                   extra: dict | None = None) -> RunOutcome:
    """Run (or resume) an experiment; see the module docstring.

    Args:
        source_text: the experiment file as written, kept in the run directory.
        out: the run directory (default: the experiment's ``out``, else ``runs/<name>``).
        fresh: discard what the directory holds and compute everything.
        on_change: what to do when the directory holds a run of another config: ``refuse``
            (raise, the default) or ``fresh``.
        extra: keys added to ``results.json`` (the demo records its arguments).
    """
    from ..subject.subject import set_threads

    cells = expand(exp)
    out = prepare_output_dir(out or exp.run_dir, "run", create=False)  # refuses a user's directory
    subjects = Subjects(exp)
    # a bad model path fails before the directory exists; a cluster's driver does not load a
    # model of the hub or a disk (its workers do, and a bad path fails the shared work there)
    check_here = exp.executor.kind == "local" or bool(exp.subject.organism)
    if not out.exists() and check_here:
        subjects.load_all(exp.targets)
    out = prepare_output_dir(out, "run")
    with RunLock(out):
        manifest, start_over = check_manifest(out, exp, fresh, on_change)
        if start_over:
            if check_here:
                subjects.load_all(exp.targets)  # before anything is deleted
            clear(out)
        manifest = begin(out, exp, source_text, manifest)
        set_threads(exp.threads)
        done = _finished_cells(out, cells)
        reused = [c.setting for c in cells if c.key in done]
        computed: list[str] = []
        failed: dict[str, dict] = {}
        progress.log(f"experiment {progress.plain(repr(exp.name))}: {len(cells)} cells, {len(reused)} finished "
                     f"earlier, {len(cells) - len(reused)} to run; run directory {progress.plain(out)}")
        status = RunStatus(out, exp.executor.kind, cells, done)
        start = time.perf_counter()
        if exp.executor.kind == "local":
            shared = _run_here(out, exp, subjects, cells, done, failed, computed, status)
        else:
            from .executors import run_on_cluster

            if exp.subject.organism and len(done) < len(cells):
                subjects.load_all(exp.targets)  # trains and caches organism and oracles once, for every worker
            shared = run_on_cluster(out, exp, cells, done, failed, computed, status)
        if computed:
            progress.log(f"computed {len(computed)} cells in {time.perf_counter() - start:.0f} s "
                         f"(loading models {subjects.load_s:.0f} s)")
        results = {**assemble(exp, cells, done, shared, failed), **(extra or {})}
        paths = write_results(out, results)
        meta = {"config_hash": manifest["config_hash"], "experiment": manifest.get("experiment"),
                "sessions": manifest.get("sessions")}
        paths["store"] = write_store(out, results, meta)
    return RunOutcome(results, paths, computed, reused, {f["setting"]: f["error"] for f in failed.values()})


def assemble(exp: Experiment, cells: list[Cell], done: dict[str, dict], shared: dict[tuple[str, int], dict],
             failed: dict[str, dict] | None = None) -> dict:
    """``results.json`` from the stored files (:func:`unlearn_audit.results.schema.run_document`):
    ``targets``, a list with per target the document of ``docs/results.md`` (methods keyed by
    setting name; :func:`unlearn_audit.results.schema.target_document`; cells that failed
    listed under ``failed`` with their error), one target or many."""
    from ..attacks import get_attack
    from ..metrics.tofu import add_forget_quality

    failed = failed or {}
    declarations = {a: get_attack(a).declaration for a in exp.attacks}
    docs: list[dict] = []
    for target in exp.targets:
        first = shared[(target, exp.seeds[0])]
        mine = [c for c in cells if c.target == target and c.key in done]
        baselines = {seed: next((done[c.key]["baselines"] for c in mine if c.seed == seed), {}) for seed in exp.seeds}
        timings: dict[str, float] = {}
        for seed in exp.seeds:
            for k, v in shared[(target, seed)]["timings_s"].items():
                timings[f"shared:{k}"] = timings.get(f"shared:{k}", 0.0) + v
        for c in mine:
            for k, v in done[c.key]["timings_s"].items():
                key = f"unlearn:{c.setting}" if k == "unlearn" else k
                timings[key] = timings.get(key, 0.0) + v
        timings["total"] = sum(timings.values())
        extra = {"settings": {c.setting: {"method": c.method, "params": c.params, "seed": c.seed, "cell": c.key}
                              for c in mine},
                 "experiment": {"name": exp.name, "config_hash": config_hash(exp), "target": target,
                                "seeds": exp.seeds, "attacks": list(exp.attacks), "cells": len(mine)}}
        if len(exp.seeds) > 1:
            extra["baselines_by_seed"] = {str(s): b for s, b in baselines.items()}
        lost = {f["setting"]: {k: f[k] for k in ("method", "seed", "error")}
                for f in failed.values() if f["target"] == target}
        if lost:
            extra["failed"] = lost
        results = {c.setting: done[c.key]["result"] for c in mine}
        add_forget_quality([first["original"], first["oracle"], *results.values()], first["oracle"])
        doc = target_document(first, results, baselines[exp.seeds[0]],
                              declarations, {k: round(v, 2) for k, v in timings.items()}, **extra)
        docs.append(doc)
    return run_document(docs, {"name": exp.name, "config_hash": config_hash(exp), "cells": len(cells)})


