"""The attack base class's loop, the declared results schema and the table reading declarations
(no model: fake subjects and hand-written documents)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from unlearn_audit.attacks.base import Attack
from unlearn_audit.report.tables import best_cells, compare_rows, higher_columns, summary_rows
from unlearn_audit.results.schema import AttackDeclaration, target_document, validate_target


class Counting(Attack):
    """Measures a subject as its number; recovery = unlearned / original."""

    name = "counting"

    def __init__(self):
        self.measured: list[tuple[str, str]] = []

    def measure(self, subject, setup, params, role):
        self.measured.append((role, subject["name"]))
        return {"value": subject["value"]}

    def score(self, unlearned, original, oracle, setup, params, name):
        return {"recovery": unlearned["value"] / original["value"],
                "residual": None if oracle is None else unlearned["value"] - oracle["value"]}


def _subject(name, value):
    return {"name": name, "value": value}


def test_references_are_measured_once_and_reused_by_every_cell():
    attack = Counting()
    original, oracle = _subject("original", 4.0), _subject("oracle", 1.0)
    refs = attack.references(original, oracle, None, None)
    assert attack.measured == [("original", "original"), ("oracle", "oracle")]
    attack.measured.clear()
    for name, value in (("a", 2.0), ("b", 3.0)):  # two cells, each given the stored references
        out = attack.run(original, {name: _subject(name, value)}, oracle, None, None, references=refs)
        assert out["methods"][name] == {"recovery": value / 4.0, "residual": value - 1.0}
        assert out["baselines"] == {"original": {"value": 4.0}, "oracle": {"value": 1.0}}
    assert attack.measured == [("unlearned", "a"), ("unlearned", "b")]


def test_without_references_the_run_measures_them_and_visits_models_in_order():
    attack = Counting()
    out = attack.run(_subject("original", 2.0), {"x": _subject("x", 1.0), "y": _subject("y", 2.0)}, None, None, None)
    assert attack.measured == [("original", "original"), ("unlearned", "x"), ("unlearned", "y")]
    assert out["methods"]["x"]["residual"] is None and "oracle" not in out["baselines"]


def _evaluation(acc):
    return {"forget_acc": acc, "forget_heldout_acc": acc, "retain_acc": 1.0, "unrelated_acc": 1.0,
            "sets": {}}


def _doc(attacks: dict, declarations: dict, oracle=True):
    shared = {"subject": "s", "concept": "c", "original": _evaluation(1.0),
              "oracle": _evaluation(0.0) if oracle else None}
    methods = {"m": {**_evaluation(0.2), "attacks": attacks}}
    return target_document(shared, methods, {}, declarations, {})


def test_an_attack_result_without_recovery_is_rejected():
    with pytest.raises(ValidationError):
        _doc({"broken": {"residual": 0.1}}, {})
    with pytest.raises(ValidationError):
        validate_target({"subject": "s", "concept": "c", "original": {"forget_acc": 1.0}, "oracle": None,
                         "methods": {}})


def test_the_table_reads_each_attack_s_declaration():
    declared = {"plain": AttackDeclaration(),
                "own": AttackDeclaration(headline="score", fallback=None, label="my score"),
                "speed": AttackDeclaration(headline="residual_auc", fallback="recovery_auc")}
    attacks = {"plain": {"recovery": 0.5, "residual": 0.25},
               "own": {"recovery": 0.9, "residual": None, "score": 7.0},
               "speed": {"recovery": 0.1, "residual": 0.2, "recovery_auc": 0.3, "residual_auc": 0.4}}
    cols, rows = summary_rows(_doc(attacks, declared), list(attacks))
    assert cols[6:] == ["plain residual", "own my score", "speed residual AUC"]
    assert rows[-1][6:] == [0.25, 7.0, 0.4]
    no_oracle = {k: {**v, "residual": None} for k, v in attacks.items()}
    cols, rows = summary_rows(_doc(no_oracle, declared, oracle=False), list(attacks))
    assert cols[6:] == ["plain recovery", "own my score", "speed recovery AUC"]
    assert rows[-1][6:] == [0.5, 7.0, 0.3]


def test_best_cells_follow_the_declared_direction():
    declared = {"up": AttackDeclaration(headline="score", fallback=None, better="higher")}
    doc = _doc({"up": {"recovery": None, "residual": None, "score": 1.0}}, declared)
    doc["methods"]["n"] = {**_evaluation(0.2), "attacks": {"up": {"recovery": None, "residual": None, "score": 3.0}}}
    cols, rows = summary_rows(doc, ["up"])
    j = cols.index("up score")
    assert best_cells(cols, rows, higher_columns(doc, ["up"])) >= {(3, j)}   # 3.0 wins: higher is better
    assert (2, j) in best_cells(cols, rows)                                   # undeclared: lower wins


def test_compare_reads_the_declared_headline():
    declared = {"w": AttackDeclaration(headline="relative_change", fallback=None)}
    doc = _doc({"w": {"recovery": None, "residual": None, "relative_change": 0.5}}, declared)
    rows = {(r["model"], r["metric"]): r for r in compare_rows(doc, doc)}
    assert rows[("m", "w relative_change")]["diff"] == 0.0


def _store_doc(attack: str, result: dict, baselines: dict | None = None) -> dict:
    from unlearn_audit.attacks import get_attack

    ev = {"forget_acc": 1.0, "forget_heldout_acc": None, "retain_acc": None, "unrelated_acc": None}
    return {"subject": "s", "concept": "c", "original": ev, "oracle": None,
            "methods": {"m": {**ev, "attacks": {attack: {"recovery": None, "residual": None, **result}}}},
            "baselines": {attack: baselines or {}},
            "declarations": {attack: get_attack(attack).declaration.model_dump()}}


def _store_series(rows, attack: str, metric: str) -> list[tuple]:
    from unlearn_audit.results.schema import AXES

    return [(*(r[a] for a in AXES if r[a] is not None), r["value"]) for r in rows
            if r["attack"] == attack and r["metric"] == metric and r["model"] == "unlearned"]


def test_the_store_reads_series_axes_from_the_attacks_declarations():
    from unlearn_audit.results.store import tidy_rows

    # in_context: k is the axis of its curves, not a metric of its own
    rows = tidy_rows(_store_doc("in_context", {"curves": {"heldout": {"k": [0, 2, 4], "acc": [0.1, 0.5, 0.7]}}}))
    assert _store_series(rows, "in_context", "curves.heldout.acc") == [(0, 0.1), (2, 0.5), (4, 0.7)]
    assert [r for r in rows if r["metric"].startswith("curves.heldout.k")] == []
    assert {r["k"] for r in rows if r["metric"] == "curves.heldout.acc"} == {0, 2, 4}
    # weight_distance: alphas are alphas even beside a "layers" list of the same length
    wd = {"alphas": [0.0, 0.5, 1.0], "layers": [7, 8, 9], "interpolation": {"forget": {"nll": [1.0, 2.0, 3.0]}}}
    rows = tidy_rows(_store_doc("weight_distance", wd))
    assert [(r["alpha"], r["layer"], r["value"]) for r in rows if r["metric"] == "interpolation.forget.nll"] == [
        (0.0, None, 1.0), (0.5, None, 2.0), (1.0, None, 3.0)]
    # relearning: saliency per [step][layer] becomes rows with both axes (it used to be dropped)
    rtt = {"reemergence": {"steps": [0, 5], "saliency_by_layer": {"m": [[0.1, 0.2], [0.3, 0.4]]}}}
    rows = tidy_rows(_store_doc("rtt", rtt))
    got = [(r["step"], r["layer"], r["value"]) for r in rows if r["metric"] == "reemergence.saliency_by_layer.m"]
    assert got == [(0, 0, 0.1), (0, 1, 0.2), (5, 0, 0.3), (5, 1, 0.4)]
    # probe: its per-layer accuracy is indexed by layer
    rows = tidy_rows(_store_doc("probe", {"acc": [0.2, 0.9]}))
    assert _store_series(rows, "probe", "acc") == [(0, 0.2), (1, 0.9)]


def test_results_json_is_always_a_list_of_targets_and_older_shapes_are_still_read():
    from unlearn_audit.results.schema import run_document
    from unlearn_audit.results.store import target_docs

    a, b = (_store_doc("probe", {"acc": [0.5]}) | {"concept": c, "timings_s": {"total": t}} for c, t in (("a", 1.0), ("b", 2.5)))
    one, two = run_document([a]), run_document([a, b], {"name": "x"})
    assert (one["concepts"], one["targets"], one["timings_s"]) == (["a"], [a], {"total": 1.0})
    assert (two["concepts"], two["timings_s"], two["experiment"]) == (["a", "b"], {"total": 3.5}, {"name": "x"})
    assert target_docs(two) == [a, b] and target_docs(one) == [a]
    assert target_docs(a) == [a]                                        # one target's document by itself
    assert target_docs({"targets": {"a": a, "b": b}}) == [a, b]         # targets as a mapping
