"""Work is kept when things go wrong: a run killed at any moment resumes to the numbers of an
uninterrupted run; Ctrl-C, a full disk and a diverging cell each end in one line and leave a
directory that resumes; ``--fresh`` deletes nothing until everything it can check holds."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from matrix import SETTINGS, finished_cells, without_timings, write_experiment
from test_cli import run_cli


@pytest.fixture(scope="module")
def env(cache_dir):
    return {"UNLEARN_AUDIT_CACHE": str(cache_dir)}


def _snapshot(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# the moments, as (point, n): the shared references train the original and the oracle one step
# each and cell "none" relearns one more, so step 4 is gradient_ascent[steps=1] unlearning; each
# cell runs two attacks, so attack 4 is that cell's logit_lens; the marker, the manifest, the
# experiment file, the shared references and cell "none" are the first five atomic writes, so
# write 6 is that cell being sealed
MOMENTS = {"during unlearning": "step:4", "during an attack": "attack:4", "while sealing": "write:6"}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_run_killed_at_any_moment_resumes_to_the_same_numbers(matrix_reference, env, tmp_path, moment):
    out = tmp_path / "run"
    path = write_experiment(tmp_path / "exp.yaml", out)
    r = run_cli("run", str(path), "--no-report", env={**env, "UNLEARN_AUDIT_KILL_AT": MOMENTS[moment]})
    assert r.returncode == -signal.SIGKILL, r.stderr
    finished = sorted(p.name for p in (out / "cells").glob("[!.]*.json"))
    assert [n.split("-")[0] for n in finished] == ["none"] and not (out / "results.json").exists()
    if moment == "while sealing":  # the temporary sibling is there, the cell is not
        assert [p.name for p in (out / "cells").iterdir() if p.name.startswith(".")]

    r = run_cli("run", str(path), "--no-report", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["reused"] == ["none"] and doc["computed"] == SETTINGS[1:]
    resumed = json.loads((out / "results.json").read_text())
    assert without_timings(resumed) == without_timings(json.loads((matrix_reference[0] / "results.json").read_text()))
    assert not [p for p in (out / "cells").iterdir() if p.name.startswith(".")]  # no temp files left


def test_ctrl_c_prints_one_line_and_the_run_resumes(matrix_reference, env, tmp_path):
    out = tmp_path / "run"
    path = write_experiment(tmp_path / "exp.yaml", out)
    cmd = [sys.executable, "-m", "unlearn_audit.cli", "run", str(path), "--no-report"]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not finished_cells(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["error: interrupted; run again to resume (finished work is kept)"]
    r = run_cli("run", str(path), "--no-report", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert "none" in json.loads(r.stdout)["reused"]
    assert without_timings(json.loads((out / "results.json").read_text())) == \
        without_timings(json.loads((matrix_reference[0] / "results.json").read_text()))


def test_a_diverging_cell_is_marked_and_the_rest_of_the_matrix_runs(micro, env, tmp_path):
    out = tmp_path / "run"
    path = write_experiment(tmp_path / "exp.yaml", out, attacks={"logit_lens": {}},
                            methods={"none": {}, "gradient_ascent": {"steps": 20, "lr": [1.0e-4, 1000.0]}})
    r = run_cli("run", str(path), "--json", env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "error: 1 of 3 cells failed (gradient_ascent[lr=1000]: ")
    doc = json.loads((out / "results.json").read_text())["targets"][0]
    assert sorted(doc["methods"]) == ["gradient_ascent[lr=0.0001]", "none"]
    assert "became" in doc["failed"]["gradient_ascent[lr=1000]"]["error"]
    assert "Failed cells (1)" in (out / "report.html").read_text()
    assert json.loads(r.stdout)["targets"][0]["failed"] == doc["failed"]


def test_fresh_deletes_nothing_when_the_run_cannot_start(matrix_reference, env, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(matrix_reference[0], out)
    before = _snapshot(out)
    path = write_experiment(tmp_path / "exp.yaml", out, subject={"model": str(tmp_path / "no-such-model")})
    r = run_cli("run", str(path), "--fresh", env=env)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr
    assert _snapshot(out) == before


def test_a_full_disk_fails_in_one_line_and_leaves_no_half_written_cell(micro, env, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mount is not permitted here")
    try:
        out = disk / "run"
        path = write_experiment(tmp_path / "exp.yaml", out)
        r = run_cli("run", str(path), env=env)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no space left on the device"), r.stderr
        for p in (out / "cells").glob("*.json"):  # every cell there is whole
            json.loads(p.read_text())
        assert not [p for p in out.rglob(".*") if p.name not in (".lock", ".unlearn-audit")]
        assert not list(out.rglob("*.svg")) or all(p.stat().st_size > 0 for p in out.rglob("*.svg"))
    finally:
        subprocess.run(["umount", str(disk)], check=True)
