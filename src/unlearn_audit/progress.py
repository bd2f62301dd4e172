"""Progress bars and log lines, always on stderr (stdout is reserved for tables and --json).

Set ``UNLEARN_AUDIT_PROGRESS=0`` to silence them (the tests do); warnings (:func:`warn`) are
printed even then: they say that something the user relies on did not hold.
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
    """A line on stderr; ``message`` may use rich markup, so pass user text through :func:`plain`."""
    if enabled():
        console.print(message, highlight=False, soft_wrap=True)  # a log file gets whole lines


def warn(message: str) -> None:
    """A ``warning:`` line on stderr, shown even with progress off; rich markup as in :func:`log`."""
    console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def plain(text) -> str:
    """``text`` shown as is in a log line (``npo_gd[beta=3]`` is not markup)."""
    from rich.markup import escape

    return escape(str(text))


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **_plain_fields(fields))

    def update(self, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **_plain_fields(fields))


def _plain_fields(fields: dict) -> dict:
    return {k: plain(v) if isinstance(v, str) else v for k, v in fields.items()}


_live: list[Progress] = []  # the one display on screen; bars opened inside it join it


@contextmanager
def bar(description: str, total: int | None) -> Iterator[_Bar]:
    """A progress bar on stderr: ``with bar("unlearning", 100) as b: b.advance(info="loss 1.2")``.
    Description and info are plain text (no rich markup).

    A bar opened while another is shown becomes one more line of the same display and goes
    away when its block ends (the experiment runner shows overall + current cell + the
    training loop's steps this way; a terminal holds only one live display at a time).
    """
    if not enabled() or not console.is_terminal:  # a log file gets the log lines, not bar frames
        yield _Bar(None, None)
        return
    if _live:
        progress = _live[-1]
        task = progress.add_task(plain(description), total=total, info="")
        try:
            yield _Bar(progress, task)
        finally:
            progress.remove_task(task)
        return
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"), console=console, transient=True,
    )
    with progress:
        _live.append(progress)
        try:
            task = progress.add_task(plain(description), total=total, info="")
            yield _Bar(progress, task)
        finally:
            _live.pop()
