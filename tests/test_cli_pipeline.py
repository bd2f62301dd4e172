"""The unlearn / audit / demo commands end to end on the micro organism."""

import json

import pytest
from test_cli import run_cli


@pytest.fixture(scope="module")
def env(cache_dir):
    return {"UNLEARN_AUDIT_CACHE": str(cache_dir)}


@pytest.fixture(scope="module")
def unlearned_dir(micro, env, tmp_path_factory):
    out = tmp_path_factory.mktemp("u") / "ga"
    r = run_cli("unlearn", "--subject", micro[0].path, "--target", "world:0", "--method", "gradient_ascent",
                "--param", "steps=20", "--out", str(out), "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["params"]["steps"] == 20
    assert doc["after"]["forget_acc"] < doc["before"]["forget_acc"]
    return out


def test_unlearned_model_is_saved_with_provenance(unlearned_dir):
    info = json.loads((unlearned_dir / "unlearn_audit.json").read_text())
    assert info["info"]["method"]["name"] == "gradient_ascent"
    assert info["info"]["organism"]["world"]["preset"] == "micro"  # target world:0 resolves in its world
    assert (unlearned_dir / "model.safetensors").is_file()


def test_audit_writes_results_json(micro, unlearned_dir, env, tmp_path):
    out = tmp_path / "audit"
    r = run_cli("audit", "rtt,unrelated", "--original", micro[0].path, "--unlearned", str(unlearned_dir),
                "--oracle", micro[1].path, "--target", "world:0", "--out", str(out),
                "--param", "steps=[0,5,10]", "--param", "bootstrap=100", "--json", env=env)
    assert r.returncode == 0, r.stderr
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["concepts"] == [on_disk["targets"][0]["concept"]]          # one shape: a list of targets
    assert json.loads(r.stdout)["targets"] == on_disk["targets"]
    rtt = on_disk["targets"][0]["methods"]["gradient_ascent"]["attacks"]["rtt"]
    assert rtt["curve"]["steps"] == [0, 5, 10] and rtt["residual"] is not None
    assert (out / "curves.csv").is_file() and (out / "relearn.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "npo", "--param", "bta=1"], "has no parameter 'bta'"),
    (["--method", "npo", "--param", "beta"], "is not k=v"),
])
def test_unlearn_bad_input_leaves_nothing(micro, env, tmp_path, args, message):
    out = tmp_path / "out"
    r = run_cli("unlearn", "--subject", micro[0].path, "--target", "world:0", "--out", str(out), *args, env=env)
    assert r.returncode == 2 and message in r.stderr and r.stderr.startswith("error:")
    assert not out.exists()


def test_diverging_unlearning_exits_1_and_writes_nothing(micro, env, tmp_path):
    out = tmp_path / "out"
    r = run_cli("unlearn", "--subject", micro[0].path, "--target", "world:0", "--method", "gradient_ascent",
                "--param", "lr=1000", "--param", "max_grad_norm=none", "--out", str(out), env=env)
    assert r.returncode == 1 and "loss became" in r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_demo_micro(env, tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--preset", "micro", "--methods", "none,npo_gd", "--attacks", "rtt", "--out", str(out),
                "--json", env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["targets"][0]
    assert set(doc["methods"]) == {"none", "npo_gd"}
    assert doc["oracle"]["forget_acc"] <= 0.15
    assert (out / "results.json").is_file() and (out / "relearn.png").is_file()
    r = run_cli("demo", "--preset", "micro", "--methods", "nope", env=env)
    assert r.returncode == 2 and "unknown method" in r.stderr
