"""Progress bars and log lines, always on stderr (stdout is reserved for tables and --json).

Set ``UNLEARN_AUDIT_PROGRESS=0`` to silence them (the tests do).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


def enabled() -> bool:
    return os.environ.get("UNLEARN_AUDIT_PROGRESS", "1") not in ("0", "false", "no")


def log(message: str) -> None:
    if enabled():
        console.print(message, highlight=False)


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **fields)

    def update(self, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **fields)


@contextmanager
def bar(description: str, total: int | None) -> Iterator[_Bar]:
    """A progress bar on stderr: ``with bar("unlearning", 100) as b: b.advance(info="loss 1.2")``."""
    if not enabled() or not console.is_terminal:  # a log file gets the log lines, not bar frames
        yield _Bar(None, None)
        return
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"), console=console, transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")
        yield _Bar(progress, task)
