"""Output helpers and option types shared by the CLI's modules.

Tables go to stdout (rich, not squeezed to 80 columns when piped); ``--json`` prints one JSON
document to stdout and nothing else there.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout instead of a table.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the world, initialisation and data order.")]
PresetOpt = Annotated[str, typer.Option("--preset", help="micro (seconds, tests), default (~1.2M params) or large.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads (default: all cores).")]
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
    for c in columns:
        t.add_column(escape(c), justify="left" if c == columns[0] else "right")
    for r in rows:
        t.add_row(*[escape(fmt(x)) for x in r])
    console = Console()
    if not console.is_terminal:  # piped or redirected: don't squeeze the table into 80 columns
        console = Console(width=200)
    console.print(t)


def fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)
