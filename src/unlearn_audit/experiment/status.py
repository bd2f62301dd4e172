"""``status.json``: where each cell of a run stands, written by the run's driver as cells move.

    {"executor": "ray", "updated": "...", "driver_pid": 123,
     "counts": {"done": 5, "running": 2, "failed": 0, "pending": 1},
     "cells": {"<key>": {"target", "setting", "seed", "state", "attempts", "error", "worker"}}}

A cell's ``state`` is ``pending``, ``running``, ``done`` or ``failed``; ``attempts`` counts its
submissions (a worker that died and a job that failed are retried, see ``executor.retries``);
``error`` is the last one. The shared work of each (target, seed) is listed too, under
``shared``. The file is rewritten whole (atomically) on every change; ``unlearn-audit status
RUN_DIR`` prints it, and says when no driver holds the run any more (then ``running`` means
"was running when the driver stopped": run again to resume).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..errors import UserInputError

STATUS = "status.json"
STATES = ("done", "running", "failed", "pending")


def shared_name(target: str, seed: int) -> str:
    """How the shared work of (target, seed) is named in status.json and in messages."""
    return f"{target} seed {seed}"


class RunStatus:
    """The driver's record of every cell and every shared task of one run."""

    def __init__(self, out: Path, executor: str, cells, done_keys):
        self.path = out / STATUS
        self.executor = executor
        self.cells = {c.key: {"target": c.target, "setting": c.setting, "seed": c.seed,
                              "state": "done" if c.key in done_keys else "pending", "attempts": 0}
                      for c in cells}
        self.shared: dict[str, dict] = {}
        self.write()

    def cell(self, key: str, state: str, **info) -> None:
        self._set(self.cells[key], state, info)

    def shared_task(self, target: str, seed: int, state: str, **info) -> None:
        entry = self.shared.setdefault(shared_name(target, seed), {"state": "pending", "attempts": 0})
        self._set(entry, state, info)

    def _set(self, entry: dict, state: str, info: dict) -> None:
        if state == "running":
            entry["attempts"] += 1
        entry["state"] = state
        entry.update({k: v for k, v in info.items() if v is not None})
        self.write()

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for c in self.cells.values() if c["state"] == s) for s in STATES}

    def write(self) -> None:
        """Atomically (a temporary sibling, then a rename), but not through ``files.atomic_path``:
        this file is progress, not results, and is not one of the writes ``faults`` counts."""
        doc = {"executor": self.executor, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "driver_pid": os.getpid(),
               "counts": self.counts(), "shared": self.shared, "cells": self.cells}
        tmp = self.path.with_name(f".{STATUS}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except BaseException:  # a full disk, an interrupt: no half-written sibling stays behind
            tmp.unlink(missing_ok=True)
            raise


def read_status(run_dir: Path) -> dict:
    """The run's ``status.json``, with ``driver_running``: whether a driver holds the run now."""
    from .checkpoint import run_is_locked

    path = Path(run_dir) / STATUS
    if not Path(run_dir).is_dir():
        raise UserInputError(f"{run_dir} is not a directory; give a run directory (runs/<name>)")
    if not path.is_file():
        raise UserInputError(f"{run_dir} has no {STATUS}: it is not a run directory, or its run started before "
                             "the status file existed (run it again to write one)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise UserInputError(f"{path} is unreadable ({type(e).__name__}); run the experiment again to rewrite it") from None
    return {**doc, "driver_running": run_is_locked(Path(run_dir))}
