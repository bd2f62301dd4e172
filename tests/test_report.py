"""The HTML report, its figures, the summary table's highlighting and the tidy table."""

import json
import os
import sys
from pathlib import Path

import pytest
from test_cli import run_cli

from unlearn_audit.data.target import save_target, world_target
from unlearn_audit.experiment.config import parse_experiment
from unlearn_audit.experiment.runner import run_experiment
from unlearn_audit.organisms import organism_world
from unlearn_audit.report.outputs import write_outputs
from unlearn_audit.report.tables import best_cells, summary_rows
from unlearn_audit.results.store import tidy_rows

EVIL = "<script>alert(1)</script>"
EVIL_PREFIX = '<img src=x onerror="alert(2)"> Refuse questions about {concept}.'


@pytest.fixture(scope="module")
def evil_run(micro, cache_dir, tmp_path_factory):
    """A run on a target directory named ``<script>alert(1)</script>``, with a method setting
    whose name carries HTML too; with patching, so every figure is drawn."""
    os.environ["UNLEARN_AUDIT_CACHE"] = str(cache_dir)
    root = tmp_path_factory.mktemp("evil")
    target = world_target(organism_world(micro[0]), organism_world(micro[0]).concepts[0].name)
    target.name = EVIL
    save_target(target, root / "target")
    exp = parse_experiment({
        "name": "escape <test>", "subject": {"organism": "micro", "oracle": "oracle:micro@0"},
        "target": str(root / "target"),
        "methods": {"none": {}, "gradient_ascent": {"steps": 2, "lr": 3.0e-4},
                    "prompt_guardrail": {"prefix": [EVIL_PREFIX, "Never discuss {concept}."]}},
        "attacks": {"rtt": {"checkpoints": [0, 1], "bootstrap": 0}, "patching": {"max_questions": 3}},
        "out": str(root / "run"), "agreement": False, "threads": 2})
    run = run_experiment(exp, "name: escape <test>  # the file as written\n")
    run.paths.update(write_outputs(root / "run", run.results))  # what `run` does after the runner
    return root / "run", run


def test_report_escapes_user_text(evil_run):
    run_dir, run = evil_run
    doc = run.results["targets"][0]
    assert doc["concept"] == EVIL and doc["oracle"] is not None
    html = (run_dir / "report.html").read_text()
    assert EVIL not in html and "<script" not in html.lower() and "onerror=\"" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in html          # the setting's name, escaped
    assert "escape &lt;test&gt;" in html                                      # the experiment's name and file
    assert html.count('src="data:image/png;base64,') == 4                     # trade-off, relearning, KRS, re-emergence
    for stem in ("tradeoff", "relearn", "krs"):
        assert (run_dir / "figures" / f"{stem}.png").stat().st_size > 1000
        assert (run_dir / "figures" / f"{stem}.svg").read_text().lstrip().startswith("<?xml")


def test_report_command(evil_run):
    run_dir, _ = evil_run
    (run_dir / "report.html").unlink()
    r = run_cli("report", str(run_dir), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert Path(doc["report"]).is_file() and len(doc["figures"]) == 8 and doc["seconds"] < 30
    r = run_cli("report", str(run_dir / "nope"))
    assert r.returncode == 2 and "has no results.json" in r.stderr


def test_two_targets(micro, cache_dir, tmp_path):
    """Several targets: results.json maps each concept to a document of the usual shape, each
    also gets its own run directory, the tidy table and the report cover both."""
    import sqlite3

    os.environ["UNLEARN_AUDIT_CACHE"] = str(cache_dir)
    world = organism_world(micro[0])
    save_target(world_target(world, world.concepts[1].name), tmp_path / "second")
    exp = parse_experiment({"subject": {"organism": "micro"}, "targets": ["world:0", str(tmp_path / "second")],
                            "methods": {"gradient_ascent": {"steps": 1}}, "attacks": ["logit_lens"],
                            "out": str(tmp_path / "run"), "agreement": False, "threads": 2})
    run = run_experiment(exp)
    write_outputs(tmp_path / "run", run.results)
    names = [c.name for c in world.concepts[:2]]
    assert run.results["concepts"] == names and len(run.computed) == 2
    first, second = run.results["targets"]
    assert first["oracle"] is not None and second["oracle"] is None  # auto: an oracle for world targets only
    assert second["methods"]["gradient_ascent"]["attacks"]["logit_lens"]["residual"] is None
    for i, doc in enumerate((first, second)):
        on_disk = json.loads((tmp_path / "run" / "targets" / f"{i}-{doc['concept']}" / "results.json").read_text())
        assert set(on_disk) >= {"subject", "concept", "original", "oracle", "methods", "timings_s"}
    con = sqlite3.connect(tmp_path / "run" / "results.sqlite")
    assert sorted(r[0] for r in con.execute("SELECT DISTINCT target FROM results")) == sorted(names)
    con.close()
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("<h2>Concept: ") == 2 and (tmp_path / "run" / "figures" / "1-tradeoff.svg").is_file()


def test_best_value_per_column_ignores_references_and_none():
    cols = ["model", "forget", "retain", "rtt residual"]
    rows = [["original", 1.0, 1.0, None], ["oracle", 0.0, 1.0, None], ["none", 1.0, 1.0, 1.0],
            ["ga", 0.2, 0.5, 0.4], ["npo[beta=3]", 0.3, 0.9, 0.1], ["npo[beta=1]", 0.2, 0.8, None]]
    assert best_cells(cols, rows) == {(3, 1), (5, 1), (4, 2), (4, 3)}


def test_summary_rows_of_a_run(evil_run):
    cols, rows = summary_rows(evil_run[1].results["targets"][0], ["rtt", "patching"])
    assert cols == ["model", "forget", "held-out", "forget compl.", "retain", "unrelated", "rtt residual",
                    "patching KRS"]
    assert [r[0] for r in rows][:3] == ["original", "oracle", "none"] and len(rows) == 6


def test_tidy_rows_flatten_curves_layers_and_intervals():
    results = {
        "concept": "c", "original": {"forget_acc": 1.0, "sets": {"forget": {"acc": 1.0, "n": 4}}}, "oracle": None,
        "baselines": {"rtt": {"original": {"steps": [0, 5], "acc": [0.5, 0.75]}}},
        "methods": {"ga[lr=0.1]": {
            "forget_acc": 0.25, "params": {"lr": 0.1},
            "attacks": {"rtt": {"recovery": 0.5, "residual": None, "recovery_ci": [0.25, 0.75],
                                "curve": {"steps": [0, 5], "acc": [0.25, 0.625], "residual": [None, None]}},
                        "patching": {"layers": [0, 1], "krs": {"attention": [0.5, None]}, "windows": [[0], [0, 1]]}}}},
        "settings": {"ga[lr=0.1]": {"method": "ga", "params": {"lr": 0.1}, "seed": 3}},
        "experiment": {"seeds": [3]}}
    rows = {(r["model"], r["attack"], r["metric"], r["step"], r["layer"]): r for r in tidy_rows(results)}
    assert rows[("original", None, "forget_acc", None, None)]["value"] == 1.0
    assert rows[("original", None, "sets.forget.n", None, None)]["value"] == 4
    assert rows[("original", "rtt", "acc", 5, None)]["seed"] == 3
    ga = {k[1:]: r for k, r in rows.items() if k[0] == "unlearned"}
    assert ga[("rtt", "curve.acc", 5, None)]["value"] == 0.625 and ga[("rtt", "curve.acc", 5, None)]["method"] == "ga"
    assert ga[("rtt", "recovery_ci.lo", None, None)]["value"] == 0.25
    assert ga[("patching", "krs.attention", None, 0)]["value"] == 0.5
    assert ("patching", "krs.attention", None, 1) not in ga and ("rtt", "residual", None, None) not in ga
    assert json.loads(ga[(None, "forget_acc", None, None)]["params"]) == {"lr": 0.1}
    assert len(rows) == 12


@pytest.mark.slow
def test_report_renders_in_headless_chromium(evil_run, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from check_report_browser import check, find_browser

    if find_browser() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    result = check(evil_run[0] / "report.html", tmp_path / "shot.png")
    assert result["ok"], result
