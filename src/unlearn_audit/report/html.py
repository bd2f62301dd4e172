"""``report.html``: one self-contained page per run directory, readable offline and printable.

Per target: the summary table (models x attacks; residual knowledge, best value of each column
among the unlearned models highlighted), the forget-vs-unrelated trade-off scatter across
method settings, the relearning curves per attack, the KRS heatmap when patching ran, and the
time each stage took. Then the experiment file exactly as given and the versions of every
session that computed part of the run. Figures are embedded as base64 PNG (no network, no
script) and also saved under ``figures/`` as PNG and SVG for papers.

Every piece of text that comes from a user or a results file (concept names, method
settings, questions, the config) goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from ..errors import UserInputError
from ..files import is_ours, read_json, read_text, write_text_atomic
from ..results.store import load_results, target_docs
from .figures import krs_heatmap_plot, reemergence_plot, relearn_plot, save, tradeoff_plot
from .tables import best_cells, higher_columns, summary_rows
from .tables import fmt as cell

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1180px;
       padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #555; }
table { border-collapse: collapse; margin: .8em 0; font-variant-numeric: tabular-nums; }
th, td { padding: .25em .6em; border-bottom: 1px solid #e3e3e3; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f5f5f7; }
tr.reference td { color: #555; font-style: italic; }
td.best { background: #d9f2d9; font-weight: 600; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
pre { background: #f5f5f7; padding: .8em; overflow-x: auto; font-size: 13px; }
.note { color: #555; font-size: .9em; }
"""


def e(text) -> str:
    """Escape any value for HTML text or an attribute."""
    return html.escape("" if text is None else str(text), quote=True)


def fmt(x) -> str:
    return e(cell(x))


def table(columns: list[str], rows: list[list], best: set[tuple[int, int]] = frozenset(),
          references: int = 0) -> str:
    """An HTML table; ``best`` cells highlighted; the first ``references`` rows styled as references."""
    head = "".join(f"<th>{e(c)}</th>" for c in columns)
    body = []
    for i, r in enumerate(rows):
        cells = "".join(f'<td class="best">{fmt(x)}</td>' if (i, j) in best else f"<td>{fmt(x)}</td>"
                        for j, x in enumerate(r))
        body.append(f'<tr class="reference">{cells}</tr>' if i < references else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def embed(png: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{e(alt)}">'
            f"<figcaption>{e(caption)}</figcaption></figure>")


def attacks_of(doc: dict) -> list[str]:
    ordered = doc.get("experiment", {}).get("attacks") or []
    seen = [a for m in doc.get("methods", {}).values() for a in m.get("attacks", {})]
    return [a for a in dict.fromkeys([*ordered, *seen]) if a in seen]


def target_section(doc: dict, figures: Path, stem: str) -> str:
    """The report of one target (see the module docstring)."""
    attacks = attacks_of(doc)
    cols, rows = summary_rows(doc, attacks)
    references = sum(1 for r in rows if r[0] in ("original", "oracle"))
    oracle = "with an oracle (residual knowledge)" if doc.get("oracle") else "without an oracle (recovery only)"
    parts = [f"<h2>Concept: {e(doc.get('concept'))}</h2>",
             f'<p class="meta">subject {e(doc.get("subject"))}, {e(oracle)}; '
             f"{len(doc.get('methods', {}))} unlearned models, attacks: {e(', '.join(attacks) or 'none')}</p>",
             table(cols, rows, best_cells(cols, rows, higher_columns(doc, attacks)), references),
             '<p class="note">Accuracies are QA accuracy on each set. Per attack: residual knowledge '
             "(0 = as good as the oracle, 1 = nothing removed), or recovery where there is no oracle; "
             "patching shows the best KRS. Highlighted: the best unlearned model per column "
             "(lowest, except retain and unrelated accuracy).</p>"]
    plots = [("tradeoff", tradeoff_plot, "Forget vs unrelated QA accuracy, one point per method setting."),
             ("relearn", relearn_plot, "Relearning curves: accuracy on each attack's evaluation set by step."),
             ("krs", krs_heatmap_plot, "Knowledge recovery score of restoring vanilla components, by layer window."),
             ("reemergence", reemergence_plot, "Concept neurons while relearning (rtt): overlap of each model's "
                                               "top concept neurons with the original's, and saliency by layer and step.")]
    for name, plot, caption in plots:
        fig = plot(doc)
        if fig is not None:
            png, _ = save(fig, figures / f"{stem}{name}", ("png", "svg"))
            parts.append(embed(png, f"{name} figure", caption))
    failed = doc.get("failed") or {}
    if failed:
        parts += [f"<h3>Failed cells ({len(failed)})</h3>",
                  '<p class="note">These cells raised an error and are not in the table; run the '
                  "experiment again to retry them.</p>",
                  table(["setting", "method", "seed", "error"],
                        [[n, f.get("method"), f.get("seed"), f.get("error")] for n, f in failed.items()])]
    settings = doc.get("settings", {})
    if settings:
        rows = [[n, s.get("method"), s.get("seed"), json.dumps(s.get("params"), sort_keys=True)]
                for n, s in settings.items()]
        parts += ["<details><summary>Method settings</summary>",
                  table(["setting", "method", "seed", "parameters"], rows), "</details>"]
    timings = doc.get("timings_s", {})
    if timings:
        parts += ["<details><summary>Time per stage (s, summed over cells and sessions)</summary>",
                  table(["stage", "seconds"], [[k, float(v)] for k, v in timings.items()]), "</details>"]
    return "\n".join(parts)


def provenance_section(run_dir: Path) -> str:
    """The experiment file as given, the normalised config and the versions per session."""
    parts = ["<h2>Configuration and versions</h2>"]
    source = run_dir / "experiment.yaml"
    if source.is_file():
        parts += ["<h3>Experiment file</h3>", f"<pre>{e(read_text(source, 'experiment file'))}</pre>"]
    manifest_path = run_dir / "manifest.json"
    manifest = read_json(manifest_path, "run manifest") if manifest_path.is_file() else None
    if isinstance(manifest, dict):
        parts.append(f'<p class="meta">config hash {e(manifest.get("config_hash"))}, created {e(manifest.get("created"))}</p>')
        sessions = manifest.get("sessions", [])
        if sessions:
            keys = list(dict.fromkeys(k for s in sessions for k in s.get("versions", {})))
            rows = [[s.get("started"), *[s.get("versions", {}).get(k) for k in keys]] for s in sessions]
            parts += ["<h3>Sessions</h3>", table(["session started", *keys], rows)]
        parts += ["<details><summary>Normalised config (what the hash covers)</summary>",
                  f"<pre>{e(json.dumps(manifest.get('config'), indent=2))}</pre></details>"]
    else:
        parts.append('<p class="note">No manifest: this run directory was not written by the experiment runner.</p>')
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` (and ``figures/``) for a run directory; return its path."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    figures = run_dir / "figures"
    if not is_ours(run_dir, "run") and ((run_dir / "report.html").exists() or figures.exists()):
        raise UserInputError(f"{run_dir} was not written by unlearn-audit and already holds report.html or "
                             "figures/; copy results.json into a new directory and report there")
    figures.mkdir(exist_ok=True)
    docs = target_docs(results)
    sections = [target_section(d, figures, f"{i}-" if len(docs) > 1 else "") for i, d in enumerate(docs)]
    name = results.get("experiment", {}).get("name") or run_dir.name
    concepts = ", ".join(str(d.get("concept")) for d in docs)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(name)}: unlearning audit</title><style>{CSS}</style></head><body>"
            f"<h1>Unlearning audit: {e(name)}</h1>"
            f'<p class="meta">Is the concept gone from the model, or only hidden? Concepts: {e(concepts)}. '
            f"Run directory: {e(run_dir.resolve())}</p>"
            + "\n".join(sections) + provenance_section(run_dir) + "</body></html>\n")
    return write_text_atomic(run_dir / "report.html", page)
