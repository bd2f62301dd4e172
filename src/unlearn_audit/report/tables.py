"""Tables from results (pure: reads results documents only, no torch).

- :func:`summary_rows`: the headline table of one target: accuracies, then per attack its
  residual knowledge (its recovery where there is no oracle; KRS for patching, the relative
  weight change for weight_distance);
- :func:`best_cells`: which cell of each column is best among the unlearned models;
- :func:`compare_rows`: the headline numbers of two runs side by side.
"""

from __future__ import annotations

from collections.abc import Collection

HEADLINE = ("forget_acc", "forget_heldout_acc", "retain_acc", "unrelated_acc")


def fmt(x) -> str:
    """A table cell as text: 3 decimals, an em dash for a missing value (a string as it is:
    ``n/a`` for an attack that does not apply)."""
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def _attack_columns(results: dict, attacks: list[str]):
    """Per attack: its declaration, the result key its column shows (the headline, or the
    fallback when no model has a residual) and the column's label."""
    from ..results.schema import declaration

    has_oracle = bool(results.get("oracle"))
    methods = results["methods"].values()
    declared = {a: declaration(results, a) for a in attacks}

    def key(attack):
        d = declared[attack]
        if d.fallback is None:
            return d.headline
        if has_oracle and any(m["attacks"].get(attack, {}).get("residual") is not None for m in methods):
            return d.headline
        return d.fallback

    keys = {a: key(a) for a in attacks}
    labels = {a: f"{a} {declared[a].label or keys[a].replace('_auc', ' AUC')}" for a in attacks}
    return declared, keys, labels


def higher_columns(results: dict, attacks: list[str]) -> set[str]:
    """The attack columns of :func:`summary_rows` whose attack declares higher as better."""
    declared, _, labels = _attack_columns(results, attacks)
    return {labels[a] for a in attacks if declared[a].better == "higher"}


def summary_rows(results: dict, attacks: list[str]) -> tuple[list[str], list[list]]:
    """The demo table: accuracies (and, on world and tofu: targets, TOFU's forget truth ratio
    ``mean(min(R, 1/R))`` and forget quality against the oracle), then one column per attack: the headline its declaration
    names (:class:`unlearn_audit.results.schema.AttackDeclaration`): its residual knowledge, or
    its recovery when there is no oracle, or the attack's own number (patching's best KRS,
    weight_distance's relative change); ``n/a`` where the attack does not apply."""
    has_oracle = bool(results.get("oracle"))
    declared, keys, labels = _attack_columns(results, attacks)
    # TOFU's columns where the evaluations have them (world and tofu: targets)
    tofu = any((m or {}).get("tofu") for m in [results["original"], *results["methods"].values()])
    cols = ["model", "forget", "held-out", "forget compl.", "retain", "unrelated"]
    if tofu:
        cols += ["truth ratio", "forget quality"]
    fixed = len(cols)
    cols += [labels[a] for a in attacks]
    margin = "rtt" in attacks and "unrelated" in attacks
    if margin:
        cols.append(f"rtt − unrelated {keys['rtt']}")

    def accs(r):
        compl = r["sets"].get("forget_completion", {}).get("acc")
        out = [r["forget_acc"], r["forget_heldout_acc"], compl, r["retain_acc"], r["unrelated_acc"]]
        if tofu:
            block = r.get("tofu") or {}
            out += [block.get("forget_truth_ratio"), block.get("forget_quality")]
        return out

    rows = [["original", *accs(results["original"])] + [None] * (len(cols) - fixed)]
    if has_oracle:
        baselines = results.get("baselines", {})
        own = [baselines.get(a, {}).get("oracle", {}).get(keys[a]) if declared[a].fallback is None else None
               for a in attacks]
        rows.append(["oracle", *accs(results["oracle"]), *own] + [None] * (len(cols) - fixed - len(attacks)))
    def headline(result: dict, key: str):  # "n/a": the attack does not apply (an ensemble's internals)
        return "n/a" if "not_applicable" in result else result.get(key)

    for name, m in results["methods"].items():
        row = [name, *accs(m), *[headline(m["attacks"].get(a, {}), keys[a]) for a in attacks]]
        if margin:
            a, b = m["attacks"]["rtt"].get(keys["rtt"]), m["attacks"]["unrelated"].get(keys["rtt"])
            row.append(None if a is None or b is None else a - b)
        rows.append(row)
    return cols, rows


def higher_is_better(column: str) -> bool:
    """Retain and unrelated accuracy should stay high, and so should TOFU's forget truth ratio (1:
    true and perturbed answers alike) and forget quality (the oracle's distribution); forget
    accuracies, recovery, residual knowledge, KRS and the targeted margin should be low."""
    return column in ("retain", "unrelated", "truth ratio", "forget quality")


def best_cells(columns: list[str], rows: list[list], higher: Collection[str] = ()) -> set[tuple[int, int]]:
    """``(row, column)`` of the best value per numeric column among the unlearned models (not
    original, oracle, or the ``none`` baseline; ties all count); ``higher``: more columns where
    higher is better (:func:`higher_columns`)."""
    def competes(name: str) -> bool:
        return name not in ("original", "oracle", "none") and not name.startswith("none[")

    best = set()
    for j, col in enumerate(columns[1:], start=1):
        values = [(i, r[j]) for i, r in enumerate(rows) if competes(str(r[0])) and isinstance(r[j], int | float)]
        if len(values) < 2:
            continue
        pick = max if higher_is_better(col) or col in higher else min
        target = pick(v for _, v in values)
        best |= {(i, j) for i, v in values if abs(v - target) <= 1e-12}
    return best


def headline(doc: dict) -> dict[tuple[str, str], float | None]:
    """``{(model, metric): value}``: accuracies of every model, recovery, residual and the
    declared headline per attack."""
    from ..results.schema import declaration

    out: dict[tuple[str, str], float | None] = {}
    for model in ("original", "oracle"):
        if doc.get(model):
            out.update({(model, k): doc[model].get(k) for k in HEADLINE})
    for name, m in doc.get("methods", {}).items():
        out.update({(name, k): m.get(k) for k in HEADLINE})
        for attack, r in m.get("attacks", {}).items():
            own = declaration(doc, attack).headline  # the attack's declared headline, when it is another key
            keys = ("recovery", "residual") + ((own,) if own not in ("recovery", "residual") else ())
            out.update({(name, f"{attack} {k}"): r.get(k) for k in keys})
    return out


def compare_rows(a: dict, b: dict) -> list[dict]:
    """One row per (target, model, metric) present in either run: both values and b - a."""
    from ..results.store import target_docs

    docs_a = {d.get("concept"): d for d in target_docs(a)}
    docs_b = {d.get("concept"): d for d in target_docs(b)}
    rows = []
    for concept in list(docs_a) + [c for c in docs_b if c not in docs_a]:
        ha, hb = headline(docs_a.get(concept, {})), headline(docs_b.get(concept, {}))
        for key in list(ha) + [k for k in hb if k not in ha]:
            va, vb = ha.get(key), hb.get(key)
            diff = vb - va if isinstance(va, int | float) and isinstance(vb, int | float) else None
            rows.append({"target": concept, "model": key[0], "metric": key[1], "a": va, "b": vb, "diff": diff})
    return rows


def reemergence_reading(method: str, block: dict, step_index: int = -1) -> str | None:
    """One line: how much the method's top concept neurons overlap the original's at a step,
    against the oracle's."""
    mine = block["overlap_with_original"].get(method)
    oracle = block["overlap_with_original"].get("oracle")
    if not mine:
        return None
    step = block["steps"][step_index]
    text = f"{method}: top concept neurons overlap the original's {mine[0]:.2f} before relearning, {mine[step_index]:.2f} at step {step}"
    if oracle:
        text += f" (oracle: {oracle[step_index]:.2f})"
    return text

