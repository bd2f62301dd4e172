"""Output helpers and option types shared by the CLI's modules.

Tables go to stdout (rich, not squeezed to 80 columns when piped); ``--json`` prints one JSON
document to stdout and nothing else there.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from .report.tables import fmt  # one cell format for terminal and HTML tables

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout instead of a table.")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed of the world, initialisation and data order.")]
PresetOpt = Annotated[str, typer.Option("--preset", help="micro (seconds, tests), default (~1.2M params) or large; <preset>-dp<epsilon> (e.g. micro-dp8): trained with DP-SGD.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", min=1, max=4096, help="CPU threads (default: all cores).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, else float32), float32, bfloat16, float16.")]


def emit_json(doc) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=float) + "\n")
    sys.stdout.flush()


def table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(title))  # names like npo_gd[beta=3] are text, not rich markup
    for i, c in enumerate(columns):
        numeric = i > 0 and all(x is None or isinstance(x, int | float) for x in (r[i] for r in rows))
        t.add_column(escape(c), justify="right" if numeric else "left")
    for r in rows:
        t.add_row(*[escape(fmt(x)) for x in r])
    console = Console()
    if not console.is_terminal:  # piped or redirected: don't squeeze the table into 80 columns
        console = Console(width=200)
    console.print(t)




def print_reemergence(results: dict, attack: str = "rtt") -> None:
    """Under a results table: per method, whether relearning revives the original's concept neurons."""
    from .report.tables import reemergence_reading as reading

    lines = [reading(name, m["attacks"][attack]["reemergence"]) for name, m in results["methods"].items()
             if "reemergence" in m["attacks"].get(attack, {})]
    if any(lines):
        print(f"concept neurons while relearning ({attack}; Jaccard with the original's top neurons):")
        for line in filter(None, lines):
            print("  " + line)
