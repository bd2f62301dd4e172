"""The report's files in a run directory: the figures beside each target's results, and
``report.html``. The experiment runner writes results only; the commands (and notebooks) call
:func:`write_outputs` after it.
"""

from __future__ import annotations

import time
from pathlib import Path

from .. import progress
from ..results.store import target_dirs


def write_figures(out: Path, doc: dict) -> dict[str, Path]:
    """relearn.png, patching.png and reemergence.png of one target's document, where it has the
    results to draw."""
    from .figures import krs_figure, reemergence_figure, relearn_figure

    paths = {}
    for key, draw, name in (("figure", relearn_figure, "relearn.png"), ("patching_figure", krs_figure, "patching.png"),
                            ("reemergence_figure", reemergence_figure, "reemergence.png")):
        fig = draw(doc, Path(out) / name)
        if fig:
            paths[key] = fig
    return paths


def write_outputs(out: str | Path, results: dict, report: bool = True) -> dict[str, Path]:
    """The figures of every target (``targets/<i>-<concept>/`` when there are several) and, with
    ``report``, ``report.html``; the paths of the top-level ones."""
    from .html import write_report

    out = Path(out)
    paths: dict[str, Path] = {}
    for path, doc in target_dirs(out, results):
        figures = write_figures(path, doc)
        if path == out:
            paths.update(figures)
    if report:
        start = time.perf_counter()
        paths["report"] = write_report(out)
        progress.log(f"report written in {time.perf_counter() - start:.1f} s")
    return paths
