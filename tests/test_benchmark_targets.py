"""Benchmark targets (TOFU, WMDP, MUSE) on fixture files in each benchmark's published schema."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from unlearn_audit.data.target import load_target
from unlearn_audit.errors import UserInputError

FIX = Path(__file__).parent / "fixtures" / "benchmarks"


def test_tofu_sets_and_counts():
    t = load_target(f"tofu:forget01@{FIX / 'tofu'}")
    assert t.name == "tofu-forget01" and t.benchmark.benchmark == "tofu"
    # 2 authors x 20 QA, split by author: each half is one whole author
    assert len(t.forget_qa) == len(t.forget_heldout_qa) == 20
    assert len({q.entity for q in t.forget_qa}) == len({q.entity for q in t.forget_heldout_qa}) == 1
    assert {q.entity for q in t.forget_qa} != {q.entity for q in t.forget_heldout_qa}
    assert len(t.retain_qa) == 20 and len(t.forget_text) == 40
    assert len(t.unrelated_qa) == 6 and set(t.extra_eval) == {"real_authors", "world_facts"}
    assert len(t.holdout_text) == 6
    truth = t.benchmark.truth
    assert {k: len(v) for k, v in truth.items()} == {"forget": 40, "retain": 6, "real_authors": 3, "world_facts": 3}
    row = json.loads((FIX / "tofu" / "forget01_perturbed.json").read_text().splitlines()[0])
    first = truth["forget"][0]
    assert (first.question, first.paraphrased, list(first.perturbed)) == (
        row["question"], row["paraphrased_answer"], row["perturbed_answer"])
    assert len(first.perturbed) == 5
    ra = truth["real_authors"][0]
    assert ra.paraphrased == ra.answer and len(ra.perturbed) == 3  # no paraphrase: the answer itself


def test_tofu_split_is_seeded():
    a = load_target(f"tofu:forget01@{FIX / 'tofu'}", seed=0)
    b = load_target(f"tofu:forget01@{FIX / 'tofu'}", seed=0)
    assert a.forget_qa == b.forget_qa


def test_wmdp_questions_and_corpora():
    t = load_target(f"wmdp:bio@{FIX / 'wmdp'}")
    rows = [json.loads(x) for x in (FIX / "wmdp" / "wmdp-bio.json").read_text().splitlines()]
    assert len(t.benchmark.mc) == len(rows) == 8
    assert [m.choices[m.answer] for m in t.benchmark.mc] == [r["choices"][r["answer"]] for r in rows]
    assert len(t.forget_qa) + len(t.forget_heldout_qa) == 8
    assert len(t.forget_text) == 4  # the 5th forget-corpus text is <= 50 characters: dropped, as RMU reads it
    assert len(t.retain_text) == 3 and t.retain_qa == []
    assert "biology" in t.benchmark.mc_description
    with pytest.raises(UserInputError, match="no wmdp-cyber"):
        load_target(f"wmdp:cyber@{FIX / 'wmdp'}")


def test_muse_sets_from_load_data_layout():
    t = load_target(f"muse:news@{FIX / 'muse'}")
    b = t.benchmark
    assert (len(t.forget_text), len(t.retain_text), len(t.holdout_text)) == (4, 4, 4)
    assert len(t.forget_qa) + len(t.forget_heldout_qa) == 4 and len(t.retain_qa) == 4
    assert len(b.verbmem) == 3 and b.verbmem[0].prompt + b.verbmem[0].gt == t.forget_text[0]
    assert {k: len(v) for k, v in b.knowmem.items()} == {"forget": 4, "retain": 4}
    assert {k: len(v) for k, v in b.knowmem_icl.items()} == {"forget": 1, "retain": 1}
    assert {k: len(v) for k, v in b.privleak.items()} == {"forget": 4, "retain": 2, "holdout": 4}
    # the corpus directory itself works as well as its parent
    assert load_target(f"muse:news@{FIX / 'muse' / 'news'}").summary() == t.summary()


def test_env_directory(monkeypatch):
    monkeypatch.setenv("UNLEARN_AUDIT_BENCHMARKS", str(FIX))
    assert load_target("tofu:forget01").name == "tofu-forget01"
    monkeypatch.setenv("UNLEARN_AUDIT_BENCHMARKS", str(FIX / "nothing"))
    with pytest.raises(UserInputError, match="has no tofu/ directory"):
        load_target("tofu:forget01")


@pytest.mark.parametrize("spec, message", [
    ("tofu:forget99", "unknown tofu split 'forget99'"),
    ("wmdp:physics", "unknown wmdp split"),
    ("muse:poems", "unknown muse split"),
    ("tofu:", "bad benchmark target"),
    ("tofu:forget01@/no/such/dir", "does not exist"),
    (f"tofu:forget05@{FIX / 'tofu'}", "has no forget05.json"),
])
def test_bad_specs(spec, message):
    with pytest.raises(UserInputError, match=message):
        load_target(spec)


def test_bad_row_names_the_field(tmp_path):
    (tmp_path / "forget01.json").write_text('{"question": "q", "reply": "a"}\n')
    (tmp_path / "retain99.json").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(UserInputError, match="row 1: expected fields question, answer; found question, reply"):
        load_target(f"tofu:forget01@{tmp_path}")


def _fake_datasets(calls):
    """A stand-in for ``datasets`` that serves the fixture files and records what was asked."""
    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        if path == "locuslab/TOFU":
            f = FIX / "tofu" / f"{name}.json"
        elif path == "cais/wmdp":
            f = FIX / "wmdp" / f"{name}.json"
        elif path == "cais/wmdp-corpora":
            f = FIX / "wmdp" / f"{name}.jsonl"
        else:
            f = FIX / "muse" / "news" / name / f"{split}.json"
        if not f.is_file():
            raise FileNotFoundError(f"no config {name}")
        rows = [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if not f.read_text().startswith("[") \
            else json.loads(f.read_text())
        return [r if isinstance(r, dict) else {"text": r} for r in rows]
    return types.SimpleNamespace(load_dataset=load_dataset)


def test_hub_path_asks_for_the_published_names(monkeypatch):
    calls: list = []
    monkeypatch.delenv("UNLEARN_AUDIT_BENCHMARKS", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(calls))
    t = load_target("tofu:forget01")
    assert ("locuslab/TOFU", "forget01", "train") in calls and ("locuslab/TOFU", "retain99", "train") in calls
    assert {("locuslab/TOFU", n, "train") for n in ("forget01_perturbed", "retain_perturbed",
                                                     "real_authors_perturbed", "world_facts_perturbed")} <= set(calls)
    assert t.summary() == load_target(f"tofu:forget01@{FIX / 'tofu'}").summary()
    calls.clear()
    w = load_target("wmdp:bio")
    assert ("cais/wmdp", "wmdp-bio", "test") in calls and ("cais/wmdp-corpora", "bio-retain-corpus", "train") in calls
    assert all(c[1] != "bio-forget-corpus" for c in calls)  # gated: only ever read locally
    assert len(w.benchmark.mc) == 8 and len(w.retain_text) == 3
    calls.clear()
    m = load_target("muse:news")
    assert {("muse-bench/MUSE-News", c, s) for c, s in [("raw", "forget"), ("raw", "retain1"), ("verbmem", "forget"),
            ("knowmem", "forget_qa"), ("knowmem", "retain_qa_icl"), ("privleak", "holdout")]} <= set(calls)
    assert m.benchmark.summary() == load_target(f"muse:news@{FIX / 'muse'}").benchmark.summary()


def test_local_copy_needs_no_datasets_and_hub_without_it_says_what_to_install():
    code = ("import sys\n"
            "from unlearn_audit.data.target import load_target\n"
            f"load_target('tofu:forget01@{FIX / 'tofu'}')\n"
            f"load_target('muse:news@{FIX / 'muse'}')\n"
            "assert 'datasets' not in sys.modules\n"
            "sys.modules['datasets'] = None  # as if not installed\n"
            "try:\n    load_target('tofu:forget01')\nexcept Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("UserInputError") and "unlearn-audit[benchmarks]" in r.stdout


def test_experiment_file_accepts_benchmark_targets(tmp_path):
    from unlearn_audit.experiment.config import load_experiment

    good = tmp_path / "good.yaml"
    good.write_text(f"targets: ['tofu:forget01@{FIX / 'tofu'}']\nmethods: {{none: {{}}}}\n")
    load_experiment(good)
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: ['tofu:forget02']\nmethods: {none: {}}\n")
    with pytest.raises(UserInputError, match="targets.0: unknown tofu split"):
        load_experiment(bad)


def test_cli_bad_benchmark_target_exit_2():
    r = subprocess.run([sys.executable, "-m", "unlearn_audit.cli", "benchmark", "--subject", "x",
                        "--target", "wmdp:physics"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: unknown wmdp split") and len(r.stderr.strip().splitlines()) == 1
