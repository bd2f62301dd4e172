"""The cluster executors (experiment/executors.py): the micro study of ``matrix.py`` run on Ray
(a local Ray of 2 CPUs) and on Slurm through submitit's local executor gives the numbers of the
local run bit for bit; a Ray worker killed mid-cell is retried; a killed driver resumes without
recomputing finished cells; the driver's retry and failure bookkeeping on an in-process pool."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from matrix import SETTINGS, finished_cells, without_timings, write_experiment
from test_cli import run_cli

from unlearn_audit.errors import UnlearnAuditError, UserInputError
from unlearn_audit.experiment import executors
from unlearn_audit.experiment.config import ExecutorConfig, config_hash, expand, load_experiment
from unlearn_audit.experiment.runner import run_experiment
from unlearn_audit.experiment.status import read_status


@pytest.fixture(scope="module")
def env(cache_dir, matrix_reference):  # the reference run set the organism cache in this process too
    return {"UNLEARN_AUDIT_CACHE": os.environ["UNLEARN_AUDIT_CACHE"]}


def uninterrupted(matrix_reference) -> dict:
    return without_timings(json.loads((matrix_reference[0] / "results.json").read_text()))


def with_executor(tmp_path, out, **executor):
    return write_experiment(tmp_path / "exp.yaml", out, executor=executor)


# ----------------------------------------------------------------------------- config and errors

def test_the_executor_is_not_part_of_the_config_hash(tmp_path):
    local, _ = load_experiment(write_experiment(tmp_path / "a.yaml", tmp_path / "run"))
    ray, _ = load_experiment(with_executor(tmp_path, tmp_path / "run", kind="ray", max_workers=4))
    assert ray.executor.kind == "ray" and config_hash(ray) == config_hash(local)
    assert [c.key for c in expand(ray)] == [c.key for c in expand(local)]


def test_a_bad_executor_is_one_line(tmp_path, env):
    r = run_cli("run", str(with_executor(tmp_path, tmp_path / "run", kind="dask")), env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "executor.kind" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
    r = run_cli("run", str(write_experiment(tmp_path / "b.yaml", tmp_path / "run")), "--executor", "dask", env=env)
    assert r.returncode == 2 and "--executor 'dask' is not one of: local, ray, slurm" in r.stderr


@pytest.mark.parametrize("kind, module, extra", [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_a_missing_extra_names_it(kind, module, extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    exp, _ = load_experiment(with_executor(tmp_path, tmp_path / "run", kind=kind))
    with pytest.raises(UserInputError, match=rf"needs {module}, which is not installed; "
                                             rf"pip install 'unlearn-audit\[{extra}\]'"):
        executors.make_pool(exp.executor, exp, tmp_path)


def test_help_and_core_import_do_not_pull_in_ray_or_submitit():
    code = ("import sys; from unlearn_audit.cli import main\n"
            "import unlearn_audit.experiment.runner, unlearn_audit.experiment.executors\n"
            "try:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert not {'ray', 'submitit'} & set(sys.modules), 'an extra was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--executor" in r.stdout


# ----------------------------------------------------------------------------- the driver

class InProcessPool:
    """A pool that runs each task here, at once; ``lose`` maps a task name to the number of its
    first attempts that are 'lost' (as if the worker died) before one runs."""

    capacity = 2

    def __init__(self, lose: dict[str, int]):
        self.lose = dict(lose)
        self.submitted: list[str] = []

    def submit(self, tasks):
        for t in tasks:
            self.submitted.append(t.name)
            if self.lose.get(t.name, 0) > 0:
                self.lose[t.name] -= 1
                t.handle = executors.WorkerLost(f"worker of {t.name} died")
            else:
                t.handle = t.fn(*t.args)

    def wait(self, running):
        return list(running)

    def outcome(self, t):
        if isinstance(t.handle, Exception):
            raise t.handle
        return t.handle

    def close(self, running):
        pass


def test_cells_go_out_longest_first():
    from unlearn_audit.experiment.config import Cell

    def cell(method, **params):
        return Cell("world:0", method, params, method, 0, method)

    # steps, and twice that for a method that also draws a retain batch each step
    assert executors.expected_cost(cell("gradient_ascent", steps=100)) == 100
    assert executors.expected_cost(cell("gradient_difference", steps=100)) == 200
    assert executors.expected_cost(cell("none")) == 0
    assert executors.expected_cost(cell("icul", forget_pairs=4)) == 0


def test_lost_workers_are_retried_and_then_the_cell_fails(matrix_reference, tmp_path, monkeypatch):
    """gradient_ascent[steps=1] loses its worker once (retried, then done); steps=2 loses it
    three times with retries 2 (failed, with the last error); the others finish, and every
    finished number equals the local run's."""
    lose = {"gradient_ascent[steps=1]": 1, "gradient_ascent[steps=2]": 3}
    pool = InProcessPool(lose)
    monkeypatch.setattr(executors, "make_pool", lambda cfg, exp, out: pool)
    exp, text = load_experiment(with_executor(tmp_path, tmp_path / "run", kind="ray", retries=2))
    run = run_experiment(exp, text)
    assert pool.submitted.count("gradient_ascent[steps=1]") == 2
    assert pool.submitted.count("gradient_ascent[steps=2]") == 3
    assert pool.submitted[0] == "shared work of world:0 seed 0"
    assert run.computed == ["gradient_ascent[steps=1]", "none"]  # longest first: none has no steps
    assert run.failed == {"gradient_ascent[steps=2]": "failed 3 times; last: worker of gradient_ascent[steps=2] died"}
    status = read_status(tmp_path / "run")
    by_setting = {c["setting"]: c for c in status["cells"].values()}
    assert by_setting["gradient_ascent[steps=1]"]["attempts"] == 2 and by_setting["none"]["attempts"] == 1
    assert by_setting["gradient_ascent[steps=2]"]["state"] == "failed"
    assert status["counts"] == {"done": 2, "running": 0, "failed": 1, "pending": 0}
    assert not status["driver_running"]
    mine = without_timings(run.results)["targets"][0]
    ref = uninterrupted(matrix_reference)["targets"][0]
    assert mine["failed"]["gradient_ascent[steps=2]"]["error"].startswith("failed 3 times")
    for setting in ("none", "gradient_ascent[steps=1]"):
        assert mine["methods"][setting] == ref["methods"][setting]
    assert mine["original"] == ref["original"] and mine["oracle"] == ref["oracle"]

    # run again: only the failed cell is submitted, on the stored shared work
    pool2 = InProcessPool({})
    monkeypatch.setattr(executors, "make_pool", lambda cfg, exp, out: pool2)
    again = run_experiment(exp, text)
    assert pool2.submitted == ["gradient_ascent[steps=2]"] and sorted(again.reused) == ["gradient_ascent[steps=1]", "none"]
    assert without_timings(json.loads((tmp_path / "run" / "results.json").read_text())) == uninterrupted(matrix_reference)


class EarlyPool(InProcessPool):
    """Cells go out in the same batch as their shared task (as on Ray with a slot for each)."""

    early_cells = True
    capacity = 4

    def submit(self, tasks):
        self.waited = getattr(self, "waited", []) + [t.name for t in tasks if t.cell is not None and t.args[3]]
        super().submit(tasks)


def test_cells_may_start_while_their_shared_work_runs(matrix_reference, tmp_path, monkeypatch):
    pool = EarlyPool({})
    monkeypatch.setattr(executors, "make_pool", lambda cfg, exp, out: pool)
    exp, text = load_experiment(with_executor(tmp_path, tmp_path / "run", kind="ray"))
    run_experiment(exp, text)
    longest_first = SETTINGS[:3][::-1]  # gradient_ascent steps 2, then 1, then none
    assert pool.submitted == ["shared work of world:0 seed 0", *longest_first]  # cells in the same pass
    assert pool.waited == longest_first  # each unlearned, then waited for the shared file
    assert without_timings(json.loads((tmp_path / "run" / "results.json").read_text())) == uninterrupted(matrix_reference)


def test_a_method_error_fails_its_cell_once_without_retries(matrix_reference, tmp_path, monkeypatch):
    pool = InProcessPool({})
    monkeypatch.setattr(executors, "make_pool", lambda cfg, exp, out: pool)
    import unlearn_audit.experiment.runner as runner

    real = runner._run_cell

    def diverging(out, exp, subjects, cell, shared, label):
        if cell.setting == "none":
            raise UnlearnAuditError("the loss diverged")
        return real(out, exp, subjects, cell, shared, label)

    monkeypatch.setattr(runner, "_run_cell", diverging)
    exp, text = load_experiment(with_executor(tmp_path, tmp_path / "run", kind="ray"))
    run = run_experiment(exp, text)
    assert pool.submitted.count("none") == 1 and run.failed == {"none": "the loss diverged"}


def test_status_command_prints_the_cells(matrix_reference, tmp_path, env):
    r = run_cli("status", str(matrix_reference[0]), env=env)
    assert r.returncode == 0, r.stderr
    assert "3 done, 0 running, 0 failed, 0 pending" in r.stdout and "no driver is running" in r.stderr
    r = run_cli("status", str(tmp_path), env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "has no status.json" in r.stderr


# ----------------------------------------------------------------------------- on Ray and Slurm

def _ray_cells():
    """The pids of processes running a cell task (Ray titles a worker by the task it runs)."""
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::cell_task"):
            out.append(p.pid)
    return out


@pytest.mark.slow
def test_ray_kills_of_a_worker_mid_cell_are_retried(matrix_reference, tmp_path, env):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'unlearn-audit[ray]')")
    pytest.importorskip("psutil")
    out = tmp_path / "run"
    # two workers of one CPU each: cells start while the shared task runs (and wait for its file)
    path = with_executor(tmp_path, out, kind="ray", max_workers=2, cpus_per_cell=1, retries=2)
    proc = subprocess.Popen([sys.executable, "-m", "unlearn_audit.cli", "run", str(path), "--no-report"],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, killed = time.time() + 240, None
    while killed is None and proc.poll() is None and time.time() < deadline:
        pids = _ray_cells()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=300)
    assert killed is not None and proc.returncode == 0, stderr.decode()[-2000:]
    status = read_status(out)
    assert status["counts"]["done"] == len(SETTINGS)
    assert sorted(c["attempts"] for c in status["cells"].values()) == [1, 1, 2]
    assert "submitting it again (attempt 2 of 3)" in stderr.decode()
    assert without_timings(json.loads((out / "results.json").read_text())) == uninterrupted(matrix_reference)


@pytest.mark.slow
def test_ray_a_killed_driver_resumes_without_recomputing(matrix_reference, tmp_path, env):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'unlearn-audit[ray]')")
    out = tmp_path / "run"
    path = with_executor(tmp_path, out, kind="ray", max_workers=1)
    cmd = [sys.executable, "-m", "unlearn_audit.cli", "run", str(path), "--no-report"]
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not finished_cells(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    before = {p.name: p.stat().st_mtime_ns for p in finished_cells(out)}
    assert 1 <= len(before) < len(SETTINGS) and not (out / "results.json").exists()
    time.sleep(1)  # Ray's own processes follow their driver

    r = run_cli("run", str(path), "--no-report", "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["reused"]) >= len(before) and sorted(doc["reused"] + doc["computed"]) == sorted(SETTINGS)
    assert {p.name: p.stat().st_mtime_ns for p in finished_cells(out) if p.name in before} == before
    assert without_timings(json.loads((out / "results.json").read_text())) == uninterrupted(matrix_reference)


@pytest.mark.slow
def test_slurm_through_submitits_local_executor(matrix_reference, tmp_path):
    pytest.importorskip("submitit", reason="the slurm extra is not installed (pip install 'unlearn-audit[slurm]')")
    exp, text = load_experiment(with_executor(tmp_path, tmp_path / "run", kind="slurm", cluster="local",
                                              max_workers=2))
    run = run_experiment(exp, text)
    assert sorted(run.computed) == sorted(SETTINGS)
    assert without_timings(json.loads((tmp_path / "run" / "results.json").read_text())) == uninterrupted(matrix_reference)
    assert list((tmp_path / "run" / "slurm").rglob("*_log.out"))  # submitit's job logs, in the run directory
    assert ExecutorConfig(kind="slurm").array_parallelism == 32
