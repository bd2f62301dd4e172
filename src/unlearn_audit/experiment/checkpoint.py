"""What makes a run resumable: sealed cell files, the manifest with the config hash, a lock.

Layout of a run directory (besides the results and the report)::

    manifest.json        config hash, the normalised config, versions, one entry per session
    experiment.yaml      the experiment file exactly as given (a YAML dump when built in Python)
    cells/<method>-<key>.json     one finished cell each
    shared/<target>-s<seed>-<key>.json  original/oracle evaluation and attack references

Every cell and shared file is written atomically (temp file, then rename: a killed process
leaves either the old state or the whole new file, never half of one) and *sealed*: it carries
the key of what it holds and a sha256 of its own content. A file that does not parse, whose
checksum does not match (truncated, edited, bit rot) or that holds another key is reported and
recomputed. Numbers are read back from these files to build ``results.json``, so a resumed run
and an uninterrupted one assemble the same document from the same kind of source.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import time
from pathlib import Path

from .. import progress
from ..errors import UserInputError
from ..files import files_under, write_text_atomic
from .config import Cell, Experiment, config_hash, digest, hashed_config, threads_used, utility_key
from .rundir import _clean, write_json_atomic

FORMAT = 1
MANIFEST = "manifest.json"
# every file a run writes, as a path relative to the run directory; --fresh removes these and
# nothing else (a user's notes.txt or figures/plot.png beside them stay)
_TOP = r"manifest\.json|experiment\.yaml|status\.json|results\.json|results\.sqlite|curves\.jsonl|curves\.csv|" \
       r"(?:relearn|patching|reemergence)\.png|report\.html"
# slurm/: submitit's job files (pickles, logs, submission scripts) of the slurm executor
_NESTED = r"(?:cells|shared)/[^/]+\.json|slurm/(?:\d+[\d_]*/)?[\w.-]+\.(?:pkl|out|err|sh)|figures/(?:\d+-)?(?:tradeoff|relearn|krs|reemergence)\.(?:png|svg)|" \
          r"targets/\d+-[^/]+/(?:results\.json|curves\.jsonl|curves\.csv|(?:relearn|patching|reemergence)\.png)"
# the same, and the temporary siblings of each (".results.json.x1y2.json": a killed write)
OWNED = re.compile(rf"^(?:(?:[^/]+/)*\.)?(?:{_TOP}|{_NESTED})(?:\.[^/]*)?$")
OWNED_DIRS = ("cells", "shared", "figures", "targets", "slurm")


def seal(doc: dict) -> dict:
    """``doc`` (NaN/inf as null) plus the sha256 of its canonical JSON under ``checksum``."""
    doc = json.loads(json.dumps(_clean({k: v for k, v in doc.items() if k != "checksum"})))  # as read back
    return {**doc, "checksum": digest(doc)}


def read_sealed(path: Path, key: str) -> tuple[dict | None, str | None]:
    """``(doc, None)`` for an intact file holding ``key``; ``(None, why)`` for a damaged one;
    ``(None, None)`` when there is no file."""
    if not path.is_file():
        return None, None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        return None, f"unreadable ({type(e).__name__})"
    if not isinstance(doc, dict) or "checksum" not in doc:
        return None, "no checksum"
    if digest({k: v for k, v in doc.items() if k != "checksum"}) != doc["checksum"]:
        return None, "checksum mismatch (truncated or edited)"
    if doc.get("key") != key or doc.get("format") != FORMAT:
        return None, "written for another cell or format"
    return doc, None


def cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / f"{cell.method}-{cell.key}.json"


def shared_key(exp: Experiment, target: str, seed: int) -> str:
    from ..attacks import get_attack

    attacks = {a: get_attack(a).params(s).model_dump(exclude={"seed"}) for a, s in exp.attacks.items()}
    return digest({"subject": exp.subject.model_dump(), "target": target, "seed": seed, "attacks": attacks,
                   "agreement": exp.agreement, **utility_key(exp), "threads": threads_used(exp)})[:20]


def shared_path(out: Path, exp: Experiment, target: str, seed: int) -> Path:
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in Path(target).name or target)[:40]
    return out / "shared" / f"{slug}-s{seed}-{shared_key(exp, target, seed)}.json"


def versions() -> dict[str, str]:
    """Versions that can change the numbers, recorded with every session of a run."""
    import torch
    import transformers

    from .. import __version__

    return {"unlearn_audit": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "platform": platform.platform()}


def _flat(doc, prefix: str = "") -> dict[str, object]:
    if isinstance(doc, dict):
        out: dict[str, object] = {}
        for k, v in doc.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): doc}


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    a, b = _flat(old), _flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def owned(relative: str) -> bool:
    """Whether a file at ``relative`` (POSIX, under a run directory) is one a run writes."""
    if OWNED.match(relative):
        return True
    head, _, name = relative.rpartition("/")  # a temporary sibling: ".<name>.<random>"
    return name.startswith(".") and bool(OWNED.match(f"{head}/{name[1:]}".lstrip("/")))


def clear(out: Path) -> None:
    """Remove what a run wrote in ``out`` (and nothing else): the files :func:`owned` names,
    then the run's own folders where they are left empty."""
    for rel in files_under(out):
        if owned(rel):
            (out / rel).unlink()
    for d in sorted((p for name in OWNED_DIRS for p in [out / name, *(out / name).rglob("*")] if p.is_dir()),
                    key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def check_manifest(out: Path, exp: Experiment, fresh: bool, on_change: str = "refuse") -> tuple[dict | None, bool]:
    """The manifest of the run in ``out`` to continue, and whether the run starts over.

    Starting over: with ``fresh``, or when ``out`` holds a run of a different config hash and
    ``on_change="fresh"`` (the demo, whose directory it names itself); with ``"refuse"`` that
    raises (the user chooses ``--fresh`` or another directory). Nothing is changed here.
    """
    path = out / MANIFEST
    if fresh:
        return None, True
    if not path.is_file():
        return None, False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        progress.warn(f"{path} is unreadable; cells are still checked one by one")
        return None, False
    if not isinstance(manifest, dict) or manifest.get("config_hash") == config_hash(exp):
        return manifest if isinstance(manifest, dict) else None, False
    changed = changed_keys(manifest.get("config", {}), hashed_config(exp))
    what = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "")
    if on_change != "fresh":
        raise UserInputError(f"{out} holds results of a different experiment config (changed: {what or 'unknown'}); "
                             "run with --fresh to recompute it there, or choose another --out")
    progress.log(f"{out}: the config changed ({what}); starting over")
    return None, True


def begin(out: Path, exp: Experiment, source_text: str | None, manifest: dict | None) -> dict:
    """Record this session in the manifest (a new one when ``manifest`` is None), keep the
    experiment file as given, and remove temporary files of a killed process."""
    if manifest is None:
        manifest = {"format": FORMAT, "config_hash": config_hash(exp), "config": hashed_config(exp),
                    "experiment": exp.model_dump(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "sessions": []}
    manifest["sessions"] = [*manifest.get("sessions", []),
                            {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(),
                             "argv": sys.argv[1:], "versions": versions()}]
    write_json_atomic(out / MANIFEST, manifest)
    if source_text is None:  # built in Python: keep what was asked for, in the file's format
        import yaml

        source_text = yaml.safe_dump(exp.model_dump(exclude_defaults=True), sort_keys=False)
    write_text_atomic(out / "experiment.yaml", source_text)
    for d in ("cells", "shared"):  # temp files of a killed process
        for stale in (out / d).glob(".*") if (out / d).is_dir() else ():
            stale.unlink(missing_ok=True)
    return manifest


class RunLock:
    """An exclusive lock on a run directory for the life of a run (``flock``; released by the
    OS when the process dies, so a killed run never leaves a stale lock)."""

    def __init__(self, out: Path):
        self.path = out / ".lock"
        self._file = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            self._file = None
            raise UserInputError(f"another unlearn-audit run is writing to {self.path.parent}; wait for it, "
                                 "or give another --out") from None
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()


def run_is_locked(out: Path) -> bool:
    """Whether a run holds the lock of ``out`` now (a driver is running there)."""
    try:
        import fcntl
    except ImportError:
        return False
    path = out / ".lock"
    if not path.is_file():
        return False
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False
