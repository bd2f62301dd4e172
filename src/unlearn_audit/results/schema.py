"""The declared shape of a results document (``docs/results.md`` explains every key).

One target's document (what :func:`unlearn_audit.audit` returns, and what ``results.json``
holds per target) is a :class:`TargetResult`: the behavioural evaluation of the original, the
oracle and every unlearned model, and per model and attack an :class:`AttackResult`. Every
model lists at least the four accuracies of ``docs/results.md``; attacks add their own keys freely (``extra`` is
allowed), but ``recovery`` and ``residual`` are always there (a number or null).

Each attack also *declares* how it is read (:class:`AttackDeclaration`): which result key is
its headline, its column label, and which direction is better. The declarations of a run's
attacks are written into the document (``declarations``), so the report, the tables and
``compare`` read them from the results alone (no torch, no registry) and a new attack needs no
edit there.

Pure pydantic: importing this module imports no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Axis = Literal["step", "layer", "k", "alpha", "bits"]
AXES: tuple[str, ...] = ("step", "layer", "k", "alpha", "bits")


class AttackDeclaration(BaseModel):
    """How an attack's result is read.

    ``headline`` is the key of the number that sums the attack up; when it is oracle-dependent
    (``residual``...) and no model has a residual (no oracle), ``fallback`` is read instead;
    ``fallback=None`` means the headline is always read (and the oracle's own value is shown
    in its row, from the attack's baselines). ``label`` names the table column (default: the
    headline key). ``better``: which direction of the headline means better unlearning.

    Series (how the results store turns lists into rows, never guessing from names): ``axes``
    maps a key whose list holds axis values (``steps`` of a curve) to its axis; a list of numbers
    beside it or below it, as long as it, is one row per axis value. ``indexed`` maps a key whose
    list index *is* the axis value (a probe's accuracy per layer; in a list of lists, the inner
    lists' index, e.g. re-emergence's saliency per step and layer).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    headline: str = "residual"
    fallback: str | None = "recovery"
    label: str | None = None
    better: Literal["lower", "higher"] = "lower"
    axes: dict[str, Axis] = Field(default_factory=lambda: {"steps": "step", "layers": "layer"})
    indexed: dict[str, Axis] = {}


class Evaluation(BaseModel):
    """The behavioural evaluation of one model (fractions in [0, 1])."""

    model_config = ConfigDict(extra="allow")
    forget_acc: float | None
    forget_heldout_acc: float | None
    retain_acc: float | None
    unrelated_acc: float | None
    utility: dict[str, float | None] | None = None   # lm-eval scores, "<task>/<metric>" (utility: in the experiment)
    tofu: dict | None = None   # forget_truth_ratio, forget_quality (vs the oracle), forget_truth_ratios


class AttackResult(BaseModel):
    """One attack on one unlearned model; ``*_ci`` are bootstrap 95% intervals ``[lo, hi]``."""

    model_config = ConfigDict(extra="allow")
    recovery: float | None
    residual: float | None
    recovery_ci: tuple[float, float] | None = None
    residual_ci: tuple[float, float] | None = None


class MethodResult(Evaluation):
    attacks: dict[str, AttackResult] = {}


class TargetResult(BaseModel):
    """One target's results document."""

    model_config = ConfigDict(extra="allow")
    subject: str
    concept: str
    original: Evaluation
    oracle: Evaluation | None
    methods: dict[str, MethodResult]
    baselines: dict[str, dict] = {}
    declarations: dict[str, AttackDeclaration] = {}
    timings_s: dict[str, float] = {}


def target_document(shared: dict, methods: dict, baselines: dict, declarations: dict[str, AttackDeclaration],
                    timings_s: dict[str, float], **extra) -> dict:
    """The one assembler of a target's document, used by the API and the experiment runner:
    ``shared`` is the target's shared work (subject, concept, original and oracle evaluation),
    ``methods`` each unlearned model's evaluation with its ``attacks``; checked on the way out."""
    doc = {"subject": shared["subject"], "concept": shared["concept"], "original": shared["original"],
           "oracle": shared["oracle"], "methods": methods, "baselines": baselines, "timings_s": timings_s,
           **extra, "declarations": {a: d.model_dump() for a, d in declarations.items()}}
    return validate_target(doc)


class RunResult(BaseModel):
    """``results.json``: one target or many, always as a list."""

    model_config = ConfigDict(extra="allow")
    subject: str
    concepts: list[str]
    targets: list[TargetResult]
    timings_s: dict[str, float] = {}


def run_document(targets: list[dict], experiment: dict | None = None, **extra) -> dict:
    """The one shape of ``results.json``: ``targets`` (each a :func:`target_document`), their
    ``concepts`` in order, the subject, and the total time."""
    doc = {"subject": targets[0]["subject"], "concepts": [t["concept"] for t in targets], "targets": targets,
           **({"experiment": experiment} if experiment else {}),
           "timings_s": {"total": round(sum(t["timings_s"].get("total", 0.0) for t in targets), 2)}, **extra}
    RunResult.model_validate(doc)
    return doc


def validate_target(doc: dict) -> dict:
    """``doc`` itself, after checking it against :class:`TargetResult` (a mistake in an attack or
    the assembler fails here, before anything is written)."""
    TargetResult.model_validate(doc)
    return doc


def declaration(doc: dict, attack: str) -> AttackDeclaration:
    """The declaration of ``attack`` in a results document (the default one for documents
    written before attacks declared themselves)."""
    found = doc.get("declarations", {}).get(attack)
    return AttackDeclaration.model_validate(found) if found else AttackDeclaration()
