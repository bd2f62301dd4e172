"""Reading a benchmark's rows: from a local copy of its published files, or from the hub.

A local copy is read with the standard library only: ``.json`` files holding one JSON object
per line (TOFU's hub files) or one JSON array (MUSE's ``load_data.py`` layout), and ``.jsonl``
files. Parquet (WMDP's hub files) needs ``pyarrow``. The hub path calls
``datasets.load_dataset(path, name, split=...)``; ``datasets`` is the ``benchmarks`` extra and is
imported only here, only when no local directory is given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...errors import RunError, UserInputError
from ...files import read_text

ENV_DIR = "UNLEARN_AUDIT_BENCHMARKS"  # a directory holding tofu/, wmdp/, muse/ local copies


def local_dir(benchmark: str, given: str | None) -> Path | None:
    """The local copy to read: ``given`` (from ``<bench>:<config>@DIR``), else
    ``$UNLEARN_AUDIT_BENCHMARKS/<bench>``, else None (read from the hub)."""
    if given:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise UserInputError(f"{benchmark} directory {given!r} does not exist; give the directory "
                                 f"holding the {benchmark.upper()} files")
        return path
    root = os.environ.get(ENV_DIR)
    if root:
        path = Path(root).expanduser() / benchmark
        if not path.is_dir():
            raise UserInputError(f"{ENV_DIR}={root!r} has no {benchmark}/ directory; put a local copy "
                                 f"of {benchmark.upper()} there or unset {ENV_DIR} to read from the hub")
        return path
    return None


def read_rows(path: Path) -> list:
    """Rows of a ``.json`` (one array, or one object per line), ``.jsonl`` or ``.parquet`` file."""
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserInputError(f"reading {path} needs pyarrow; pip install 'unlearn-audit[benchmarks]' "
                                 "or convert the file to JSON lines") from None
        return pq.read_table(path).to_pylist()
    try:
        text = read_text(path, "benchmark file")
    except UnicodeDecodeError as e:
        raise UserInputError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise UserInputError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        return list(rows)
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserInputError(f"{path} line {i}: not valid JSON ({e.msg}); expected one JSON object "
                                 "per line or one JSON array") from None
    return rows


def first_file(directory: Path, *names: str) -> Path | None:
    """The first of ``names`` (relative paths; ``*`` globs allowed) that exists under ``directory``."""
    for name in names:
        if "*" in name:
            found = sorted(directory.glob(name))
            if found:
                return found[0]
        elif (directory / name).is_file():
            return directory / name
    return None


def hub_rows(path: str, name: str | None, split: str) -> list[dict]:
    """``datasets.load_dataset(path, name, split=split)`` as a list of dicts."""
    try:
        import datasets
    except ImportError:
        raise UserInputError(f"loading {path} ({name}, {split}) from the hub needs the datasets package: "
                             "pip install 'unlearn-audit[benchmarks]', or give a local copy as "
                             f"<benchmark>:<config>@DIR or with {ENV_DIR}") from None
    try:
        data = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # network, gated repository, unknown config: one line for the user
        raise RunError(f"could not load {path} ({name}, split {split}) from the hub: "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return [dict(row) for row in data]


def need(row, keys: tuple[str, ...], where: str, i: int) -> None:
    """Check that row ``i`` of ``where`` is an object holding ``keys``."""
    if not isinstance(row, dict) or any(k not in row for k in keys):
        have = ", ".join(row) if isinstance(row, dict) else type(row).__name__
        raise UserInputError(f"{where} row {i + 1}: expected fields {', '.join(keys)}; found {have}")
