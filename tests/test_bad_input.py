"""Bad input gives exit code 2, one ``error:`` line on stderr and nothing written.

A generated sweep (hypothesis) mutates a valid experiment file and a valid target directory and
runs each through the CLI's validation path (``run --dry-run``: every check that needs no
model), in this process. Explicit cases below cover each input that once ended in a traceback
or was silently accepted.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unlearn_audit.cli import main
from unlearn_audit.params import MAX_STEPS

VALID = {
    "name": "sweep",
    "subject": {"organism": "micro"},
    "targets": ["TARGET"],
    "methods": {"none": {}, "gradient_ascent": {"steps": 2, "lr": 1.0e-4}},
    "attacks": {"rtt": {"checkpoints": [0, 1]}, "quantize": {"bits": [8]}},
    "seeds": [0],
}


def cli(*args: str) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def assert_refused(code: int, stderr: str, out: Path | None = None) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    if out is not None:
        assert not out.exists(), f"{out} was created"


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory) -> Path:
    from unlearn_audit.data.target import save_target, world_target
    from unlearn_audit.world import build_world, world_config

    path = tmp_path_factory.mktemp("target") / "t"
    save_target(world_target(build_world(world_config("micro", 0)), build_world(world_config("micro", 0)).concepts[0].name), path)
    return path


def test_the_unmutated_inputs_pass(target_dir, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({**VALID, "targets": [str(target_dir)]}))
    code, stdout, stderr = cli("run", str(exp), "--dry-run", "--json", "--out", str(tmp_path / "out"))
    assert code == 0, stderr
    assert len(json.loads(stdout)["cells"]) == 2 and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the sweep

KEY = st.text(st.characters(whitelist_categories=("Ll",)), min_size=1, max_size=8)
NOT_A_LIST = st.one_of(st.integers(), st.booleans(), st.dictionaries(KEY, st.integers(), min_size=1))
NOT_A_NUMBER = st.one_of(st.lists(st.integers(), min_size=1), st.dictionaries(KEY, st.integers(), min_size=1),
                         st.text(st.characters(whitelist_categories=("Ll",)), min_size=1))
# a method parameter given a list is a grid axis, so a bad grid value is a dict or a word
NOT_A_GRID_NUMBER = st.one_of(st.dictionaries(KEY, st.integers(), min_size=1),
                              st.text(st.characters(whitelist_categories=("Ll",)), min_size=1))
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
# (where, a value that must be refused there)
MUTATIONS = st.one_of(
    st.tuples(st.just(("seeds",)), st.one_of(NOT_A_LIST, st.just([]), st.lists(st.integers(max_value=-1), min_size=1))),
    st.tuples(st.just(("targets",)), st.one_of(NOT_A_LIST, st.just([]))),
    st.tuples(st.just(("methods",)), st.one_of(st.just({}), st.integers(), st.just([]))),
    st.tuples(st.just(("subject", "seed")), st.one_of(NOT_A_NUMBER, st.integers(max_value=-1), NON_FINITE)),
    st.tuples(st.just(("subject", "organism")), st.sampled_from(["tiny", "", "MICRO", "micro "])),
    st.tuples(st.just(("subject", "device")), st.sampled_from(["cuda", "cuda:0", "tpu", "gpu", "mps"])),
    st.tuples(st.just(("methods", "gradient_ascent", "steps")),
              st.one_of(st.integers(min_value=MAX_STEPS + 1), st.integers(max_value=-1), NOT_A_GRID_NUMBER)),
    st.tuples(st.just(("methods", "gradient_ascent", "lr")),
              st.one_of(st.floats(max_value=0), NON_FINITE, NOT_A_GRID_NUMBER)),
    st.tuples(st.just(("methods", "gradient_ascent", "max_grad_norm")), st.one_of(st.floats(max_value=0), NON_FINITE)),
    st.tuples(st.just(("attacks", "rtt", "checkpoints")),
              st.one_of(st.just([]), st.lists(st.integers(max_value=-1), min_size=1),
                        st.lists(st.integers(min_value=MAX_STEPS + 1), min_size=1))),
    st.tuples(st.just(("attacks", "quantize", "bits")),
              st.one_of(st.just([]), st.lists(st.integers(min_value=9), min_size=1),
                        st.lists(st.integers(max_value=1), min_size=1))),
    st.tuples(st.just(("attacks", "rtt", "top_frac")), st.one_of(st.floats(min_value=1), st.floats(max_value=0), NON_FINITE)),
    st.tuples(st.just(("name",)), st.one_of(st.text(min_size=121, max_size=5000), st.just(""), st.just("a/b"))),
)
# (where, a key that is not a setting there)
UNKNOWN_KEYS = st.tuples(st.sampled_from([(), ("subject",), ("attacks", "rtt"), ("methods", "gradient_ascent")]),
                         KEY.map(lambda k: f"{k}_unknown"))


def mutated(data: dict, where: tuple, value) -> dict:
    """``data`` with the key at path ``where`` set to ``value``."""
    data = json.loads(json.dumps(data))
    node = data
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    return data


def _yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@settings(max_examples=350, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(mutation=st.one_of(MUTATIONS, UNKNOWN_KEYS.map(lambda u: ((*u[0], u[1]), 1))),
       damage=st.sampled_from(["value", "bytes", "duplicate"]),
       bad_bytes=st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xf0\x28\x8c\xbc", b"\x80abc"]),
       at=st.floats(0, 1))
def test_mutated_experiment_files_are_refused_in_one_line(target_dir, mutation, damage, bad_bytes, at):
    base = {**VALID, "targets": [str(target_dir)]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, out = tmp / "exp.yaml", tmp / "out"
        if damage == "value":
            path.write_text(_yaml(mutated(base, *mutation)), encoding="utf-8")
        elif damage == "bytes":
            data = _yaml(base).encode()
            i = int(at * len(data))
            path.write_bytes(data[:i] + bad_bytes + data[i:])
        else:  # a top-level key given twice (YAML would keep the last one silently)
            text = _yaml(base)
            key = sorted(base)[int(at * (len(base) - 1))]
            path.write_text(text + _yaml({key: base[key]}), encoding="utf-8")
        code, _, stderr = cli("run", str(path), "--dry-run", "--out", str(out))
        assert_refused(code, stderr, out)
        assert sorted(p.name for p in tmp.iterdir()) == ["exp.yaml"]


TARGET_DAMAGE = st.sampled_from([
    "remove forget", "remove retain", "empty forget", "empty retain", "wrong fields", "empty answer",
    "number answer", "bad json", "non-utf8", "self symlink", "dangling forget", "target.json list",
    "target.json name", "bad kind", "lone surrogate", "directory named forget.jsonl",
])


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(damage=TARGET_DAMAGE, file=st.sampled_from(["forget", "retain", "unrelated", "forget_paraphrase"]),
       line=st.integers(0, 10_000), junk=st.text(min_size=1, max_size=20))
def test_damaged_target_directories_are_refused_in_one_line(target_dir, damage, file, line, junk):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = tmp / "t"
        shutil.copytree(target_dir, t)
        f = t / f"{file}.jsonl"
        lines = f.read_text(encoding="utf-8").splitlines()
        i = line % len(lines)
        if damage == "remove forget":
            (t / "forget.jsonl").unlink()
        elif damage == "remove retain":
            (t / "retain.jsonl").unlink()
        elif damage == "empty forget":
            (t / "forget.jsonl").write_text("")
            (t / "forget_heldout.jsonl").unlink()
        elif damage == "empty retain":
            (t / "retain.jsonl").write_text("\n")
        elif damage in ("wrong fields", "empty answer", "number answer", "bad kind", "lone surrogate"):
            row = {"wrong fields": {"q": junk, "a": junk}, "empty answer": {"question": junk, "answer": " "},
                   "number answer": {"question": junk, "answer": line}, "bad kind": {"question": junk, "answer": "x", "kind": junk + "?"},
                   "lone surrogate": {"question": junk + "\ud800", "answer": "x"}}[damage]
            lines[i] = json.dumps(row)
            f.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif damage == "bad json":
            lines[i] = lines[i][: len(lines[i]) // 2] + "{" + junk
            f.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif damage == "non-utf8":
            data = f.read_bytes()
            j = line % len(data)
            f.write_bytes(data[:j] + b"\xff\xfe" + data[j:])
        elif damage == "self symlink":
            (t / "loop.jsonl").symlink_to("loop.jsonl")
        elif damage == "dangling forget":
            (t / "forget.jsonl").unlink()
            (t / "forget.jsonl").symlink_to(tmp / "nowhere.jsonl")
        elif damage == "target.json list":
            (t / "target.json").write_text(json.dumps([junk]))
        elif damage == "target.json name":
            (t / "target.json").write_text(json.dumps({"name": [junk]}))
        elif damage == "directory named forget.jsonl":
            (t / "forget.jsonl").unlink()
            (t / "forget.jsonl").mkdir()
        path, out = tmp / "exp.yaml", tmp / "out"
        path.write_text(_yaml({**VALID, "targets": [str(t)]}))
        code, _, stderr = cli("run", str(path), "--dry-run", "--out", str(out))
        assert_refused(code, stderr, out)


# ----------------------------------------------------------------------------- explicit cases

def _exp(tmp: Path, target: Path, **changes) -> Path:
    path = tmp / "exp.yaml"
    path.write_text(_yaml({**VALID, "targets": [str(target)], **changes}), encoding="utf-8")
    return path


@pytest.mark.parametrize("changes, message", [
    ({"seeds": [-1]}, "seeds.0: Input should be greater than or equal to 0"),
    ({"methods": {"gradient_ascent": {"max_grad_norm": -1}}}, "'max_grad_norm': Input should be greater than 0"),
    ({"methods": {"gradient_ascent": {"steps": 10**20}}}, "'steps': Input should be less than or equal to 1000000"),
    ({"attacks": {"rtt": {"checkpoints": []}}}, "'checkpoints': List should have at least 1 item"),
    ({"attacks": {"quantize": {"bits": [16]}}}, "'bits.0': Input should be less than or equal to 8"),
    ({"attacks": {"quantize": {"bits": []}}}, "'bits': List should have at least 1 item"),
    ({"attacks": {"quantize": {"bits": [3]}}}, "scheme bnb quantizes to 8 bits (LLM.int8) or 4 bits (fp4/nf4), not [3]"),
    ({"attacks": {"rtt": {"checkpoints": [-1, 5]}}}, "'checkpoints.0': Input should be greater than or equal to 0"),
    ({"attacks": {"in_context": {"variants": ["bogus"]}}}, "'variants.0': Input should be 'heldout'"),
    ({"attacks": {"weight_distance": {"alphas": [0.5]}}}, "give at least two different alphas"),
    ({"subject": {"organism": "micro", "device": "cuda"}}, "this torch build sees no CUDA GPU"),
    ({"name": "bad\ud800name"}, "is not valid text (a lone surrogate)"),
    ({"out": "runs/a\x00b"}, "out: contains a NUL character"),
    ({"name": "x" * 300}, "name: String should have at most 120 characters"),
])
def test_config_values_refused_before_anything_runs(target_dir, tmp_path, changes, message):
    code, _, stderr = cli("run", str(_exp(tmp_path, target_dir, **changes)), "--out", str(tmp_path / "out"))
    assert_refused(code, stderr, tmp_path / "out")
    assert message in stderr


def test_duplicate_yaml_key_is_refused(target_dir, tmp_path):
    path = _exp(tmp_path, target_dir)
    path.write_text(path.read_text() + "methods:\n  none: {}\n")
    code, _, stderr = cli("run", str(path), "--out", str(tmp_path / "out"))
    assert_refused(code, stderr, tmp_path / "out")
    assert "key 'methods' is given twice (first on line" in stderr


@pytest.mark.parametrize("file", ["exp", "forget.jsonl", "target.json", "forget_paraphrase.jsonl"])
def test_non_utf8_bytes_are_named_with_line_and_offset(target_dir, tmp_path, file):
    t = tmp_path / "t"
    shutil.copytree(target_dir, t)
    path = _exp(tmp_path, t)
    victim = path if file == "exp" else t / file
    data = victim.read_bytes()
    nl = data.index(b"\n") + 1
    victim.write_bytes(data[:nl] + b"\xff" + data[nl:])
    code, _, stderr = cli("run", str(path), "--dry-run", "--out", str(tmp_path / "out"))
    assert_refused(code, stderr, tmp_path / "out")
    assert f"{victim} line 2 (byte {nl}): not UTF-8 text (byte 0xff)" in stderr


def test_results_files_that_are_not_results_are_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text("[1, 2]")
    for command in ("report", "results"):
        code, _, stderr = cli(command, str(run))
        assert_refused(code, stderr)
        assert "is not a results document" in stderr
    (run / "results.json").write_bytes(b'{"methods": "\xff"}')
    code, _, stderr = cli("report", str(run))
    assert_refused(code, stderr)
    assert "not UTF-8" in stderr
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]


def test_seed_flag_is_bounded():
    code, _, stderr = cli("organism", "train", "--preset", "micro", "--seed", "-1")
    assert_refused(code, stderr)
    assert "--seed" in stderr


def test_dp_flags_are_checked_before_anything_is_trained(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_AUDIT_CACHE", str(tmp_path / "cache"))
    cases = {("--dp-epsilon", "0"): "--dp-epsilon must be > 0",
             ("--dp-epsilon", "8", "--dp-delta", "1"): "--dp-delta in (0, 1)",
             ("--dp-delta", "1e-6"): "need --dp-epsilon",
             ("--dp-epsilon", "8", "--base", str(tmp_path)): "leave out --base"}
    for flags, message in cases.items():
        code, _, stderr = cli("organism", "train", *flags)
        assert_refused(code, stderr)
        assert message in stderr, (flags, stderr)
    assert not (tmp_path / "cache" / "organisms").exists()


def test_sisa_flags_are_checked_before_anything_is_trained(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_AUDIT_CACHE", str(tmp_path / "cache"))
    cases = {("--sisa-slices", "2"): "--sisa-slices needs --sisa-shards",
             ("--preset", "micro", "--sisa-shards", "20", "--sisa-slices", "2"): "more than this world's 24 entities",
             ("--sisa-shards", "2", "--dp-epsilon", "8"): "leave out --dp-epsilon",
             ("--sisa-shards", "2", "--base", str(tmp_path)): "leave out --base"}
    for flags, message in cases.items():
        code, _, stderr = cli("organism", "train", *flags)
        assert_refused(code, stderr)
        assert message in stderr, (flags, stderr)
    assert not (tmp_path / "cache" / "organisms").exists()


def _out_cases(tmp: Path) -> dict[str, Path]:
    (tmp / "file").write_text("mine")
    (tmp / "loop").symlink_to(tmp / "loop")
    return {"an existing file": tmp / "file", "under a file": tmp / "file" / "sub", "a symlink loop": tmp / "loop",
            "a too long name": tmp / ("x" * 300)}


OUT_COMMANDS = {
    "run": lambda exp, out: ["run", str(exp), "--out", str(out)],
    "run --fresh": lambda exp, out: ["run", str(exp), "--fresh", "--out", str(out)],
    "unlearn": lambda exp, out: ["unlearn", "--subject", "organism:micro", "--target", "world:0", "--method", "none",
                                 "--out", str(out)],
    "audit": lambda exp, out: ["audit", "rtt", "--original", "organism:micro", "--unlearned", "organism:micro",
                               "--target", "world:0", "--out", str(out)],
    "world export": lambda exp, out: ["world", "export", str(out), "--preset", "micro"],
    "demo": lambda exp, out: ["demo", "--preset", "micro", "--methods", "none", "--attacks", "quantize", "--out", str(out)],
}


@pytest.mark.parametrize("command", list(OUT_COMMANDS))
def test_bad_out_paths_are_refused_before_any_work(target_dir, tmp_path, command):
    exp = _exp(tmp_path, target_dir)
    for case, out in _out_cases(tmp_path).items():
        code, _, stderr = cli(*OUT_COMMANDS[command](exp, out))
        assert_refused(code, stderr)
        assert "--out" in stderr or "export directory" in stderr, (case, stderr)
    assert (tmp_path / "file").read_text() == "mine"
    code, _, stderr = cli(*OUT_COMMANDS[command](exp, "runs/a\x00b"))
    assert_refused(code, stderr)
    assert "nul" in stderr.lower()


def _snapshot(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", list(OUT_COMMANDS))
def test_a_directory_of_the_users_files_is_never_changed(target_dir, tmp_path, command):
    user = tmp_path / "mine"
    (user / "figures").mkdir(parents=True)
    (user / "notes.txt").write_text("my notes")
    (user / "figures" / "plot.png").write_bytes(b"\x89PNG my plot")
    (user / "report.html").write_text("<p>my report</p>")
    (user / "results.json").write_text('{"mine": true}')
    before = _snapshot(user)
    code, _, stderr = cli(*OUT_COMMANDS[command](_exp(tmp_path, target_dir), user))
    assert_refused(code, stderr)
    assert "is not empty" in stderr and "was not written by unlearn-audit" in stderr
    assert _snapshot(user) == before
    code, _, stderr = cli("report", str(user))
    assert_refused(code, stderr)
    assert _snapshot(user) == before


def test_read_only_directory_is_refused(target_dir, tmp_path):
    import os
    import subprocess

    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                                            capture_output=True).returncode != 0:
        pytest.skip("needs root and mount to make a read-only file system")
    try:
        code, _, stderr = cli("run", str(_exp(tmp_path, target_dir)), "--out", str(ro / "run"))
        assert_refused(code, stderr)
        assert "on a read-only file system" in stderr
    finally:
        subprocess.run(["umount", str(ro)], check=True)


# ----------------------------------------------------------------------------- model directories

@pytest.fixture
def model_copy(micro, tmp_path) -> Path:
    path = tmp_path / "model"
    shutil.copytree(micro[0].path, path)
    return path


def _evaluate(model: Path, *extra: str) -> tuple[int, str, str]:
    return cli("evaluate", "--subject", str(model), "--target", "world:micro/0", *extra)


@pytest.mark.parametrize("damage, message", [
    ("corrupt info", "unlearn_audit.json line 2: not valid JSON"),
    ("info is a list", "unlearn_audit.json: expected a JSON object"),
    ("unknown template field", "prompt_template may only use {question}, not {query}"),
    ("truncated weights", "could not load model"),
    ("missing intervention file", "lists 1 intervention(s) but interventions.safetensors is missing"),
])
def test_damaged_model_directories_are_named(model_copy, damage, message):
    info = model_copy / "unlearn_audit.json"
    meta = json.loads(info.read_text())
    if damage == "corrupt info":
        info.write_text(info.read_text()[:20])
    elif damage == "info is a list":
        info.write_text("[]")
    elif damage == "unknown template field":
        info.write_text(json.dumps({**meta, "prompt_template": "Q: {query}\nA:"}))
    elif damage == "truncated weights":
        weights = model_copy / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        info.write_text(json.dumps({**meta, "interventions": [{"kind": "embedding_corruption", "config": {}}]}))
    code, _, stderr = _evaluate(model_copy)
    assert_refused(code, stderr)
    assert message in stderr and str(model_copy) in stderr


def test_cuda_on_a_cpu_only_torch_is_refused(model_copy):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, stderr = _evaluate(model_copy, "--device", "cuda")
    assert_refused(code, stderr)
    assert "sees no CUDA GPU" in stderr


def test_saving_over_a_model_directory_keeps_foreign_files(micro, tmp_path):
    model = micro[0].copy()  # saving sets a subject's path: the shared fixture stays as it is
    out = model.save(tmp_path / "m")
    assert sorted(json.loads((out / ".unlearn-audit").read_text())["files"]) == sorted(
        p.name for p in out.iterdir() if p.name != ".unlearn-audit")
    model.save(out)  # ours, holding only our files: replaced
    (out / "notes.txt").write_text("mine")
    from unlearn_audit.errors import UserInputError

    with pytest.raises(UserInputError, match=r"holds files unlearn-audit did not write \(notes.txt\)"):
        model.save(out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
