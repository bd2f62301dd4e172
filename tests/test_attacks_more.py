"""Probes, concept vectors, in-context re-introduction, quantization, membership inference and
weight distance: each checked against a number computed another way."""

import json
import math
import random

import numpy as np
import pytest
import torch

from unlearn_audit.api import Evaluator, audit, unlearn
from unlearn_audit.attacks import weight_distance
from unlearn_audit.attacks.concept_vectors import (
    ablation,
    attribution_scores,
    compare,
    snapshot,
    top_vectors,
)
from unlearn_audit.attacks.in_context import InContextParams, curves, plan
from unlearn_audit.attacks.probe import last_token_states, probe_accuracy, probe_tasks
from unlearn_audit.attacks.quantize import quantized, rtn_symmetric
from unlearn_audit.attacks.weight_distance import barrier, distances, interpolation
from unlearn_audit.metrics import EvalSuite
from unlearn_audit.metrics.linear import fit_probe
from unlearn_audit.metrics.mia import auc, mia_scores
from unlearn_audit.report.tables import summary_rows
from unlearn_audit.results.schema import AttackResult
from unlearn_audit.subject import residency
from unlearn_audit.world import QA

NEW_ATTACKS = ["probe", "concept_vectors", "in_context", "quantize", "mia", "weight_distance"]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.fixture(scope="module")
def ga(micro, micro_target):
    """Gradient ascent, short: forget QA partly gone (about a third left)."""
    return unlearn(micro[0], micro_target, "gradient_ascent", steps=30, lr=1e-4)


# ----------------------------------------------------------------------------- probes

def _relabel(items, labels):
    return [QA(q.question, label, "qa", q.entity, "") for q, label in zip(items, labels, strict=True)]


def test_fit_probe_separates_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(200) % 4
    x = centres[y] + torch.randn(200, 16, generator=g)
    probe = fit_probe(x[:100], y[:100], 4)
    assert float((probe.predict(x[100:]) == y[100:]).float().mean()) > 0.95
    noise = torch.randn(200, 16, generator=g)
    probe = fit_probe(noise[:100], y[:100], 4)
    assert float((probe.predict(noise[100:]) == y[100:]).float().mean()) < 0.45


def test_probe_reads_a_trivially_encoded_label_and_not_shuffled_labels(micro, micro_target):
    """The question type (attribute) is written all over the last prompt token: a probe
    trained on the train-half entities decodes it for held-out entities; with labels shuffled
    it cannot beat chance (1/7)."""
    full = micro[0]
    train_items, test_items = micro_target.forget_qa, micro_target.forget_heldout_qa
    x_train, x_test = last_token_states(full, train_items), last_token_states(full, test_items)
    assert x_train.shape == (2, len(train_items), 64)

    def best(train_labels, test_labels):
        train, test = _relabel(train_items, train_labels), _relabel(test_items, test_labels)
        tasks = probe_tasks(train, test)
        return float(probe_accuracy(x_train, x_test, train, test, tasks, 1e-2).float().mean(1).max())

    assert best([q.attribute for q in train_items], [q.attribute for q in test_items]) >= 0.95
    rng = random.Random(0)
    shuffled_train = [q.attribute for q in train_items]
    shuffled_test = [q.attribute for q in test_items]
    rng.shuffle(shuffled_train)
    rng.shuffle(shuffled_test)
    assert best(shuffled_train, shuffled_test) <= 0.4


def test_probe_tasks_keep_only_testable_classes():
    train = [QA("a", "x", attribute="p"), QA("b", "y", attribute="p"), QA("c", "z", attribute="q")]
    test = [QA("d", "x", attribute="p"), QA("e", "w", attribute="p"), QA("f", "z", attribute="q")]
    tasks = probe_tasks(train, test)
    assert tasks["groups"] == {"p": {"classes": ["x", "y"], "train": [0, 1], "test": [0]}}
    assert tasks["skipped"] == ["q"]  # one class: a probe that is always right


# ----------------------------------------------------------------------------- concept vectors

def test_concept_vector_ablation_lowers_concept_accuracy(micro, micro_target):
    full = micro[0]
    scores = attribution_scores(full, micro_target.all_forget_qa, micro_target.retain_qa)
    located = top_vectors(scores, 64)
    suite = EvalSuite(full, {"forget": micro_target.all_forget_qa, "retain": micro_target.retain_qa})
    before = _state(full.model)
    out = ablation(full, suite, located, seed=0)
    assert _same(full.model, before)
    drop = {k: out["before"][k] - out["concept"][k] for k in ("forget", "retain")}
    assert drop["forget"] >= 0.2, out
    assert drop["forget"] > drop["retain"] + 0.1, out                       # specific to the concept
    # not any 64 vectors: random ones cost retain as much as forget
    random_drop = {k: out["before"][k] - out["random"][k] for k in ("forget", "retain")}
    assert drop["forget"] - drop["retain"] > random_drop["forget"] - random_drop["retain"] + 0.1, out


def test_concept_vector_trace_is_one_for_itself_and_drops_when_a_vector_changes(micro):
    full = micro[0]
    located = [(0, 3), (1, 5)]
    same = compare(snapshot(full.model, located, 20), full.model, located, top_k=20)
    assert same["cosine"] == pytest.approx(1.0) and same["jaccard"] == 1.0
    other = full.copy()
    from unlearn_audit.subject.sites import value_vectors

    with torch.no_grad():
        value_vectors(other.model, 1)[5] *= -1                              # flips its projection
    changed = compare(snapshot(full.model, located, 20), other.model, located, top_k=20)
    assert changed["per_vector"]["cosine"][1] == pytest.approx(-1.0, abs=1e-5)
    assert changed["per_vector"]["jaccard"] == [1.0, 0.0]                  # top-k became the bottom-k


# ----------------------------------------------------------------------------- in context

def test_in_context_with_no_demonstrations_is_plain_qa_accuracy(micro, micro_target, ga):
    params = InContextParams(shots=[0, 2], draws=1)
    conditions = plan(micro_target, params, micro[0])
    c = curves(ga, conditions, 64)
    heldout = micro_target.forget_heldout_qa
    names = {q.entity for q in heldout}
    plain = EvalSuite(ga, {"heldout": heldout,
                           "paraphrase": [q for q in micro_target.extra_eval["forget_paraphrase"] if q.entity in names]})
    acc = plain.accuracies(ga)
    assert 0 < acc["heldout"] < 1                                            # a non-trivial number to match
    assert c["heldout"]["k"] == [0, 2]
    assert c["heldout"]["acc"][0] == pytest.approx(acc["heldout"])
    assert c["paraphrase"]["acc"][0] == pytest.approx(acc["paraphrase"])
    # two demonstrations of the train half, separated by EOS (the organism's document separator)
    prefix = next(x["context"] for x in conditions if x["variant"] == "heldout" and x["k"] == 2)
    assert prefix.count("<|endoftext|>") == 2 and prefix.count("Question: ") == 2
    train_answers = {q.answer for q in micro_target.forget_qa}
    assert all(part.split("Answer: ")[1] in train_answers for part in prefix.split("<|endoftext|>")[:2])


# ----------------------------------------------------------------------------- quantization

def test_int8_error_is_within_half_a_step_and_int4_is_coarser():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 300, generator=g)                                   # groups of 128, 128, 44
    q8, s8 = rtn_symmetric(w, 8, 128)
    q4, s4 = rtn_symmetric(w, 4, 128)
    assert s8.shape == (16, 3)
    for q, s, q_max in ((q8, s8, 127), (q4, s4, 7)):
        per_weight_scale = torch.repeat_interleave(s, torch.tensor([128, 128, 44]), dim=1)   # (16, 300)
        assert bool(((w - q).abs() <= per_weight_scale / 2 + 1e-6).all())
        steps = q / per_weight_scale
        assert torch.allclose(steps, steps.round(), atol=1e-4) and float(steps.abs().max()) <= q_max + 1e-4
        assert torch.allclose(s[:, 0], w[:, :128].abs().amax(1) / q_max)
    assert float((w - q4).abs().mean()) > 10 * float((w - q8).abs().mean())
    row = torch.randn(3, 40, generator=g)                                   # shorter than a group: one per row
    assert rtn_symmetric(row, 8, 128)[1].shape == (3, 1)


def test_quantized_changes_every_decoder_linear_and_restores_it(micro):
    model = micro[0].model
    before = _state(model)
    with quantized(model, 4) as n:
        assert n == 14                                                      # 2 layers x (q, k, v, o, gate, up, down)
        w = model.model.layers[0].mlp.down_proj.weight
        assert not torch.equal(w, before["model.layers.0.mlp.down_proj.weight"])
        assert torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    assert _same(model, before)


# ----------------------------------------------------------------------------- membership inference

def test_auc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    pairwise = ((a[:, None] > b[None]).sum() + 0.5 * (a[:, None] == b[None]).sum()) / (40 * 30)
    assert auc(a, b) == pytest.approx(pairwise)
    assert auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0


def test_min_k_scores_match_a_hand_computation(micro):
    full = micro[0]
    text = "Members of the group include many people from the city."
    s = mia_scores(full.model, full.tokenizer, [text], k=0.2)
    ids = full.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp_all = torch.log_softmax(full.model(input_ids=ids).logits[0, :-1].float(), -1)
    logp = logp_all[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
    mu = (logp_all.exp() * logp_all).sum(-1)
    sigma = ((logp_all.exp() * logp_all ** 2).sum(-1) - mu ** 2).sqrt()
    n = max(1, int(0.2 * len(logp)))
    assert s["loss"][0] == pytest.approx(float(logp.mean()), rel=1e-5)
    assert s["min_k"][0] == pytest.approx(float(logp.sort().values[:n].mean()), rel=1e-5)
    assert s["min_k_plus_plus"][0] == pytest.approx(float(((logp - mu) / sigma).sort().values[:n].mean()), rel=1e-4)
    assert mia_scores(full.model, full.tokenizer, [text], k=1.0)["min_k"][0] == pytest.approx(s["loss"][0], rel=1e-5)


def test_mia_separates_training_texts_but_not_two_halves_of_unseen_ones(micro, micro_target):
    full = micro[0]
    members, unseen = micro_target.forget_text, micro_target.holdout_text
    assert len(unseen) >= 0.9 * len(members)
    m = mia_scores(full.model, full.tokenizer, members)
    n = mia_scores(full.model, full.tokenizer, unseen)
    assert auc(m["loss"], n["loss"]) > 0.9 and auc(m["min_k"], n["min_k"]) > 0.9
    order = np.random.default_rng(0).permutation(len(unseen))
    half = len(order) // 2
    for score in ("loss", "min_k_plus_plus"):
        assert abs(auc(n[score][order[:half]], n[score][order[half:]]) - 0.5) < 0.15


def test_holdout_entities_are_new_members_of_the_concept(micro):
    from unlearn_audit.organisms import organism_world
    from unlearn_audit.world import holdout_entities

    world = organism_world(micro[0])
    c = world.concepts[0]
    new = holdout_entities(world, c.name)
    assert [e.name for e in new] == [e.name for e in holdout_entities(world, c.name)]   # deterministic
    assert len(new) == len(c.entities) and not {e.name for e in new} & set(world.entities)
    assert all(e.attributes["concept"] == c.name and e.attributes["birthplace"] in c.cities for e in new)


def test_holdout_texts_survive_a_target_directory_round_trip(micro_target, tmp_path):
    from unlearn_audit.data.target import load_target, save_target

    save_target(micro_target, tmp_path / "t")
    loaded = load_target(tmp_path / "t")
    assert loaded.holdout_text == micro_target.holdout_text and "holdout" not in loaded.extra_eval


# ----------------------------------------------------------------------------- weight distance

def _weights(subject):
    return residency.park({k: p.detach() for k, p in subject.model.named_parameters()}, copy=True)


def test_weight_distance_and_interpolation(micro, micro_target):
    full = micro[0]
    moved = full.copy()
    with torch.no_grad():
        moved.model.model.layers[1].mlp.up_proj.weight.add_(0.01)
    d = distances(_weights(full), moved.model, "model.layers.", 2)
    w = full.model.model.layers[1].mlp.up_proj.weight
    assert d["layers"]["layer.1"]["l2"] == pytest.approx(0.01 * math.sqrt(w.numel()), rel=1e-3)
    assert d["layers"]["layer.0"]["l2"] == 0 and d["layers"]["other"]["l2"] == 0
    assert barrier([0, 0.5, 1], [1.0, 3.0, 2.0]) == pytest.approx(1.5)
    suite = EvalSuite(full, {"forget": micro_target.all_forget_qa})
    state = _state(moved.model)
    curve = interpolation(_weights(full), moved, suite, [0.0, 1.0])["forget"]
    assert _same(moved.model, state)
    assert curve["nll"][0] == pytest.approx(suite.run(full)["forget"].mean_nll, rel=1e-5)
    assert curve["nll"][1] == pytest.approx(suite.run(moved)["forget"].mean_nll, rel=1e-5)


def test_weight_distance_in_slices_of_rows_equals_whole_tensors(micro, micro_target, monkeypatch):
    """Large tensors are compared and interpolated a slice of rows at a time: the same
    interpolated weights (bit for bit, so the same curve) and the same distances up to the
    order of the sums."""
    full = micro[0]
    moved = full.copy()
    with torch.no_grad():
        for p in moved.model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 1e-3)
    suite = EvalSuite(full, {"forget": micro_target.all_forget_qa[:4]})
    whole_d = distances(_weights(full), moved.model, "model.layers.", 2)
    whole = interpolation(_weights(full), moved, suite, [0.0, 0.5])
    monkeypatch.setattr(weight_distance, "CHUNK_ELEMENTS", 100)
    largest = max(full.model.parameters(), key=lambda p: p.numel())
    assert len(weight_distance._rows(tuple(largest.shape))) > 1  # the slices are really taken
    state = _state(moved.model)
    sliced_d = distances(_weights(full), moved.model, "model.layers.", 2)
    assert interpolation(_weights(full), moved, suite, [0.0, 0.5]) == whole
    assert _same(moved.model, state)
    assert sliced_d["l2"] == pytest.approx(whole_d["l2"], rel=1e-6)
    for g, v in whole_d["layers"].items():
        assert sliced_d["layers"][g]["relative"] == pytest.approx(v["relative"], rel=1e-6)


# ----------------------------------------------------------------------------- through the API

@pytest.fixture(scope="module")
def results(micro, micro_target, ga):
    full, oracle = micro
    unlearned = {"none": unlearn(full, micro_target, "none"), "ga": ga}
    states = {k: _state(s.model) for k, s in {**unlearned, "full": full, "oracle": oracle}.items()}
    params = {"probe": {"train_on": "forget+retain"}, "in_context": {"shots": [0, 2], "draws": 1, "variants": ["heldout", "completion", "adversarial"]},
              "weight_distance": {"alphas": [0, 0.5, 1]}}
    evaluator = Evaluator(full, micro_target, agreement=False)              # no generation: attacks only
    r = audit(full, unlearned, micro_target, attacks=NEW_ATTACKS, oracle=oracle, attack_params=params,
              evaluator=evaluator)
    models = {**unlearned, "full": full, "oracle": oracle}
    return r, all(_same(models[k].model, s) and _no_hooks(models[k].model) for k, s in states.items())


def _ratio(num: float, den: float):
    """A hand-computed recovery or residual: None when the denominator vanishes."""
    return None if abs(den) <= 1e-9 else pytest.approx(num / den)


def _max_or_none(values):
    values = [v for v in values if v is not None]
    return max(values, key=lambda v: v.expected) if values else None


def test_every_new_attack_reports_recovery_and_residual_never_nan(results):
    r, untouched = results
    assert untouched                                                        # audits never mutate a subject
    json.dumps(r, allow_nan=False)                                          # no NaN or inf anywhere
    base = r["baselines"]
    for name in ("none", "ga"):
        for attack in NEW_ATTACKS:
            AttackResult.model_validate(r["methods"][name]["attacks"][attack])
        # recovery and residual recomputed by hand from each result's own numbers and the
        # baselines: (a - u) / (o - u) and (a - a_oracle) / (o - oracle_before), None on a 0 denominator
        out = r["methods"][name]["attacks"]
        p, po, pr = out["probe"], base["probe"]["original"], base["probe"]["oracle"]
        assert p["recovery"] == _ratio(p["best"] - p["qa_acc"], po["qa_acc"] - p["qa_acc"])
        assert p["residual"] == _ratio(p["best"] - pr["best"], po["qa_acc"] - pr["qa_acc"])
        q, qo, qr = out["quantize"], base["quantize"]["original"], base["quantize"]["oracle"]
        by_bits = {k: (_ratio(q["acc"][k]["forget"] - q["acc"]["full"]["forget"],
                              qo["full"]["forget"] - q["acc"]["full"]["forget"]),
                       _ratio(q["acc"][k]["forget"] - qr[k]["forget"], qo["full"]["forget"] - qr["full"]["forget"]))
                   for k in q["by_bits"]}
        assert {k: (v["recovery"], v["residual"]) for k, v in q["by_bits"].items()} == by_bits
        assert q["recovery"] == _max_or_none(v[0] for v in by_bits.values())
        assert q["residual"] == _max_or_none(v[1] for v in by_bits.values())
        c, cr = out["concept_vectors"], base["concept_vectors"]["oracle"]
        assert c["recovery"] == pytest.approx(c["jaccard"])
        assert c["residual"] == _ratio(c["jaccard"] - cr["jaccard"], 1.0 - cr["jaccard"])
        m, mo, mr = out["mia"], base["mia"]["original"], base["mia"]["oracle"]
        score = m["scores"]["min_k"]
        assert m["auc"] == score["auc"]
        assert m["recovery"] == _ratio(m["auc"] - 0.5, mo["min_k"] - 0.5)
        assert m["residual"] == _ratio(m["auc"] - mr["min_k"], mo["min_k"] - mr["min_k"])
    ga = r["methods"]["ga"]["attacks"]
    for attack in ("probe", "in_context", "quantize", "concept_vectors", "mia"):
        assert ga[attack]["recovery"] is not None and ga[attack]["residual"] is not None, attack
    assert ga["weight_distance"]["recovery"] is None and ga["weight_distance"]["relative_change"] > 0
    assert set(ga["in_context"]["variants"]) == {"heldout", "completion", "adversarial"}


def test_new_attacks_on_the_unchanged_model(results):
    """``none`` changed nothing: accuracy-based recovery is undefined, the weight-reading
    audits see a perfectly intact trace, and residuals say 'nothing removed'."""
    r, _ = results
    none = r["methods"]["none"]["attacks"]
    for attack in ("probe", "in_context", "quantize"):
        assert none[attack]["recovery"] is None, attack
    assert none["concept_vectors"]["recovery"] == 1.0 and none["concept_vectors"]["residual"] == pytest.approx(1.0)
    assert none["mia"]["residual"] == pytest.approx(1.0) and none["weight_distance"]["relative_change"] == 0
    assert none["quantize"]["residual"] == pytest.approx(1.0, abs=0.05)
    base = r["baselines"]
    assert base["mia"]["original"]["min_k"] > 0.9 > base["mia"]["oracle"]["min_k"]
    assert base["concept_vectors"]["oracle"]["jaccard"] < 0.5                # the oracle's vectors differ


def test_summary_table_has_one_column_per_attack(results):
    r, _ = results
    cols, rows = summary_rows(r, NEW_ATTACKS)
    # accuracies, TOFU's two columns (a world target), one per attack
    assert cols[6:8] == ["truth ratio", "forget quality"]
    assert len(cols) == 8 + len(NEW_ATTACKS) and all(len(row) == len(cols) for row in rows)
    assert "weight_distance rel. Δw" in cols and "probe residual" in cols
    oracle_row = next(row for row in rows if row[0] == "oracle")
    assert oracle_row[cols.index("weight_distance rel. Δw")] > 0.1          # retraining moves every weight


def test_results_write_to_a_run_directory(results, tmp_path):
    from unlearn_audit.experiment.rundir import write_results
    from unlearn_audit.results.schema import run_document

    r, _ = results
    paths = write_results(tmp_path / "run", run_document([r]))
    on_disk = json.loads(paths["results"].read_text())["targets"][0]
    assert on_disk["methods"]["ga"]["attacks"]["mia"]["auc"] == pytest.approx(r["methods"]["ga"]["attacks"]["mia"]["auc"])


# ----------------------------------------------------------------------------- through the CLI

@pytest.mark.slow
def test_cli_audit_runs_new_attacks_and_explains_a_missing_holdout(micro, micro_target, ga, cache_dir, tmp_path):
    from test_cli import run_cli

    from unlearn_audit.data.target import save_target

    env = {"UNLEARN_AUDIT_CACHE": str(cache_dir)}
    ga.save(tmp_path / "ga")
    r = run_cli("audit", "quantize,weight_distance", "--original", micro[0].path, "--unlearned", str(tmp_path / "ga"),
                "--oracle", micro[1].path, "--target", "world:0", "--out", str(tmp_path / "out"), "--json", env=env)
    assert r.returncode == 0, r.stderr
    attacks = json.loads(r.stdout)["targets"][0]["methods"]["gradient_ascent"]["attacks"]
    assert attacks["quantize"]["residual"] is not None and attacks["weight_distance"]["relative_change"] > 0
    save_target(micro_target, tmp_path / "t")
    (tmp_path / "t" / "holdout.jsonl").unlink()
    r = run_cli("audit", "mia", "--original", micro[0].path, "--unlearned", str(tmp_path / "ga"),
                "--target", str(tmp_path / "t"), "--out", str(tmp_path / "out2"), env=env)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "holdout.jsonl" in r.stderr
