import json
import os
import subprocess
import sys

from unlearn_audit.cli import main


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "unlearn_audit.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


def test_help_does_not_import_torch():
    code = ("import sys; from unlearn_audit.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "organism" in r.stdout


def test_organism_train_json(micro, cache_dir):
    r = run_cli("organism", "train", "--preset", "micro", "--json", env={"UNLEARN_AUDIT_CACHE": str(cache_dir)})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # stdout holds exactly one JSON document
    assert set(doc) >= {"params", "removed_concept", "train_s", "accuracy"}
    assert doc["accuracy"]["oracle"][doc["removed_concept"]] <= 0.15
    assert set(doc["train_s"]) == {"full", "oracle"}


def test_bad_input_exit_2_with_one_error_line(tmp_path, cache_dir):
    r = run_cli("organism", "train", "--preset", "bogus")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: unknown organism preset")
    assert len(r.stderr.strip().splitlines()) == 1
    blocker = tmp_path / "f"
    blocker.write_text("")
    r = run_cli("organism", "train", "--preset", "micro", env={"UNLEARN_AUDIT_CACHE": str(blocker / "c")})
    assert r.returncode == 2 and "not writable" in r.stderr
    r = run_cli("evaluate", "--subject", str(tmp_path / "nope"), "--target", "world:0")
    assert r.returncode == 2 and r.stderr.startswith("error: model path")
    r = run_cli("evaluate", "--subject", "organism:micro", "--target", "world:Nope",
                env={"UNLEARN_AUDIT_CACHE": str(cache_dir)})
    assert r.returncode == 2
    assert main(["organism", "train", "--no-such-flag"]) == 2


def test_world_export_and_evaluate(tmp_path, micro, cache_dir):
    assert main(["world", "export", str(tmp_path / "t"), "--concept", "0", "--preset", "micro"]) == 0
    assert (tmp_path / "t" / "forget.jsonl").is_file()
    r = run_cli("evaluate", "--subject", micro[0].path, "--target", str(tmp_path / "t"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["forget_acc"] >= 0.9 and doc["sets"]["forget_completion"]["n"] > 0
    assert main(["world", "export", str(tmp_path / "w"), "--preset", "micro"]) == 0
    lines = (tmp_path / "w" / "corpus.jsonl").read_text().splitlines()
    assert len(lines) > 100 and "text" in json.loads(lines[0])
