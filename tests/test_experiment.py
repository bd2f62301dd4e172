"""Experiment files and the matrix runner: validation, resume after a kill, damaged cells,
changed configs, the lock, and the results/compare commands, on the micro organism."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matrix import MATRIX, SETTINGS, finished_cells, without_timings, write_experiment  # noqa: E402
from test_cli import run_cli

from unlearn_audit.errors import UserInputError
from unlearn_audit.experiment.checkpoint import RunLock, begin, check_manifest, clear
from unlearn_audit.experiment.config import expand, load_experiment, parse_experiment
from unlearn_audit.experiment.runner import run_experiment
from unlearn_audit.files import prepare_output_dir


@pytest.fixture(scope="module")
def env(cache_dir):
    return {"UNLEARN_AUDIT_CACHE": str(cache_dir)}


@pytest.fixture(scope="module")
def reference(matrix_reference):
    return matrix_reference


# ----------------------------------------------------------------------------- the file

@pytest.mark.parametrize("change, message", [
    ({"methdos": {}}, "unknown key 'methdos'; valid keys: name, description, subject, targets, methods"),
    ({"subject": {"organism": "tiny"}}, "unknown organism preset 'tiny'; choose one of: micro, default, large"),
    ({"subject": {"organism": "micro", "dtyp": "float32"}}, "unknown key 'subject.dtyp'; valid keys: organism, model"),
    ({"subject": {"organism": "micro", "dtype": "float33"}}, "subject.dtype: Input should be 'auto', 'float32'"),
    ({"methods": {"npo_gdd": {}}}, "unknown method 'npo_gdd'; choose from: "),
    ({"methods": {"npo": {"bta": [1, 3]}}}, "methods.npo: method 'npo' has no parameter 'bta'; its parameters: seed, steps"),
    ({"methods": {"npo": {"beta": ["x", 3]}}}, "methods.npo: method 'npo' parameter 'beta'"),
    ({"methods": {"npo": {"seed": 1}}}, "methods.npo.seed: set seeds at the top level"),
    ({"attacks": {"rtt": {"stepz": [0]}}}, "attacks.rtt: attack 'rtt' has no parameter 'stepz'; its parameters: seed, checkpoints"),
    ({"attacks": {"relearn": {}}}, "unknown attack 'relearn'; choose from: rtt, forget_data, unrelated"),
    ({"target": "world:"}, "targets.0: bad target 'world:'"),
    ({"target": "no/such/dir"}, "targets.0: 'no/such/dir' is neither world:<concept> nor a directory"),
    ({"seeds": [0, 1, 0]}, "seeds: a seed is listed twice: [0, 1, 0]"),
])
def test_config_errors_name_the_key_and_the_choices(change, message):
    with pytest.raises(UserInputError) as e:
        parse_experiment({**MATRIX, **change}, "exp.yaml")
    assert message in str(e.value) and str(e.value).startswith("exp.yaml: ")


def test_grids_expand_to_named_settings():
    exp = parse_experiment({**MATRIX, "methods": {
        "npo_gd": {"beta": [3, 1.0], "lr": [1.0e-4, "3e-4"], "steps": 5},
        "dpo": {"preferred": [["I don't know."], ["No idea.", "Unknown."]]},  # a list-valued parameter: 2 values
        "whp": {"lr": 1.0e-4}}, "seeds": [0, 1]})
    cells = expand(exp)
    assert len(cells) == (4 + 2 + 1) * 2
    names = [c.setting for c in cells if c.seed == 1]
    assert names[:4] == ["npo_gd[beta=3,lr=0.0001,seed=1]", "npo_gd[beta=3,lr=0.0003,seed=1]",
                         "npo_gd[beta=1,lr=0.0001,seed=1]", "npo_gd[beta=1,lr=0.0003,seed=1]"]
    assert names[-1] == "whp[seed=1]" and names[4].startswith("dpo[preferred=")
    assert {c.params["steps"] for c in cells if c.method == "npo_gd"} == {5}
    assert all(c.params["seed"] == c.seed for c in cells)
    assert len({c.key for c in cells}) == len(cells)
    one = parse_experiment({**MATRIX, "methods": {"dpo": {"preferred": ["I don't know."]}}})  # a flat list: one value
    assert [c.setting for c in expand(one)] == ["dpo"]


def test_examples_are_valid_and_the_demo_file_is_the_demo():
    from unlearn_audit.experiment.config import config_hash
    from unlearn_audit.experiment.demo import demo_experiment

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        assert expand(load_experiment(path)[0])
    demo, _ = load_experiment(path.with_name("demo.yaml"))
    assert config_hash(demo) == config_hash(demo_experiment()) and demo.run_dir == demo_experiment().run_dir


def test_cli_rejects_a_bad_file_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("methods: {npo: {beta: [1, 3]}}\nattacks: [rtt, nope]\n")
    r = run_cli("run", str(path))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and r.stdout == "" and len(lines) == 1
    assert lines[0].startswith(f"error: {path}: attacks: unknown attack 'nope'; choose from: rtt, ")
    path.write_text("methods: [npo\n")
    r = run_cli("run", str(path))
    assert r.returncode == 2 and "not valid YAML" in r.stderr


# ----------------------------------------------------------------------------- resume

@pytest.mark.slow
def test_killed_run_resumes_only_the_unfinished_cells(reference, env, tmp_path):
    out = tmp_path / "run"
    path = write_experiment(tmp_path / "exp.yaml", out)
    cmd = [sys.executable, "-m", "unlearn_audit.cli", "run", str(path), "--no-report"]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not finished_cells(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no cleanup of any kind
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()
    finished = {p.name: p.read_bytes() for p in finished_cells(out)}
    assert 1 <= len(finished) < len(SETTINGS) and not (out / "results.json").exists()

    r = run_cli("run", str(path), "--no-report", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["reused"]) == len(finished) and doc["reused"] + doc["computed"] == SETTINGS
    assert {p.name: p.read_bytes() for p in finished_cells(out) if p.name in finished} == finished
    resumed = json.loads((out / "results.json").read_text())
    uninterrupted = json.loads((reference[0] / "results.json").read_text())
    assert without_timings(resumed) == without_timings(uninterrupted)
    assert not [p for p in (out / "cells").iterdir() if p.name.startswith(".")]  # no temp files left


def test_damaged_cells_are_recomputed(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    cells = sorted((out / "cells").glob("gradient_ascent-*.json"))
    text = cells[0].read_text()
    cells[0].write_text(text[: len(text) // 2])                           # truncated
    doc = json.loads(cells[1].read_text())
    doc["result"]["forget_acc"] = 0.5                                     # edited: checksum no longer matches
    cells[1].write_text(json.dumps(doc))
    exp, text = load_experiment(write_experiment(tmp_path / "exp.yaml", out))
    run = run_experiment(exp, text)
    assert sorted(run.computed) == SETTINGS[1:] and run.reused == ["none"]
    assert without_timings(run.results) == without_timings(json.loads((reference[0] / "results.json").read_text()))


def test_changed_config_is_refused_and_fresh_clears(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    changed, _ = load_experiment(write_experiment(tmp_path / "exp.yaml", out, seeds=[1]))
    with pytest.raises(UserInputError, match=r"different experiment config \(changed: seeds.*--fresh"):
        run_experiment(changed)
    r = run_cli("run", str(tmp_path / "exp.yaml"))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "--fresh" in r.stderr
    (out / "notes.txt").write_text("mine")
    (out / "figures").mkdir(exist_ok=True)
    (out / "figures" / "plot.png").write_bytes(b"mine")
    manifest, start_over = check_manifest(out, changed, fresh=True)
    assert manifest is None and start_over
    clear(out)
    assert not (out / "cells").exists() and not (out / "results.json").exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        ".lock", ".unlearn-audit", "figures", "figures/plot.png", "notes.txt"]  # the user's files stay
    begin(out, changed, None, manifest)
    assert json.loads((out / "manifest.json").read_text())["config"]["seeds"] == [1]


def test_a_locked_run_directory_is_refused(reference, tmp_path):
    exp, _ = load_experiment(write_experiment(tmp_path / "exp.yaml", tmp_path / "run"))
    prepare_output_dir(tmp_path / "run", "run")
    with RunLock(tmp_path / "run"), pytest.raises(UserInputError, match="another unlearn-audit run is writing"):
        run_experiment(exp)


# ----------------------------------------------------------------------------- results and compare

def test_results_command_formats(reference):
    run_dir, run = reference
    con = sqlite3.connect(run_dir / "results.sqlite")
    n = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    (value,) = con.execute("SELECT value FROM results WHERE setting = 'gradient_ascent[steps=2]' "
                           "AND attack IS NULL AND metric = 'forget_acc'").fetchone()
    steps = con.execute("SELECT step, value FROM results WHERE setting = 'gradient_ascent[steps=1]' "
                        "AND attack = 'rtt' AND metric = 'curve.acc' ORDER BY step").fetchall()
    layers = con.execute("SELECT COUNT(*) FROM results WHERE model = 'oracle' AND attack = 'logit_lens' "
                         "AND metric = 'acc' AND layer IS NOT NULL").fetchone()[0]
    con.close()
    doc = run.results["targets"][0]
    m = doc["methods"]["gradient_ascent[steps=2]"]
    assert value == m["forget_acc"] and layers == 2
    assert steps == list(zip([0, 1], doc["methods"]["gradient_ascent[steps=1]"]["attacks"]["rtt"]["curve"]["acc"],
                             strict=True))

    r = run_cli("results", str(run_dir), "--format", "json")
    rows = json.loads(r.stdout)
    assert r.returncode == 0 and len(rows) == n
    r = run_cli("results", str(run_dir), "--format", "csv", "--metric", "*_acc", "--attack", "none")
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "target,model,setting,method,params,seed,attack,metric,step,layer,k,alpha,bits,value"
    assert len(lines) - 1 == 5 * 4 and any(",gradient_ascent[steps=2]," in x and ",forget_acc," in x for x in lines)
    r = run_cli("results", str(run_dir), "--metric", "recovery", "--attack", "rtt")
    assert r.returncode == 0 and "gradient_ascent[steps=1]" in r.stdout
    r = run_cli("results", str(run_dir), "--format", "xml")
    assert r.returncode == 2 and "table, csv, json" in r.stderr


def test_compare_shows_the_differences(reference, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(reference[0], other)
    doc = json.loads((other / "results.json").read_text())
    methods = doc["targets"][0]["methods"]
    methods["none"]["attacks"]["rtt"]["recovery"] = 0.25
    methods["gradient_ascent[steps=1]"]["retain_acc"] -= 0.125
    (other / "results.json").write_text(json.dumps(doc))
    r = run_cli("compare", str(reference[0]), str(other), "--changed", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [(x["model"], x["metric"]) for x in rows] == [("none", "rtt recovery"),
                                                         ("gradient_ascent[steps=1]", "retain_acc")]
    assert rows[0]["a"] is None and rows[0]["b"] == 0.25 and rows[1]["diff"] == pytest.approx(-0.125)
    r = run_cli("compare", str(reference[0]), str(reference[0]))
    assert r.returncode == 0 and "0 of " in r.stderr
