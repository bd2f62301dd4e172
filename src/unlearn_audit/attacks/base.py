"""The attack base class and registry.

An attack takes the original subject, the unlearned subjects (by method name), the oracle (or
None) and the target, and returns one result per method with at least ``recovery`` and
``residual`` (see :mod:`unlearn_audit.metrics.recovery`). Attacks never mutate a subject: they
train copies, or patch and restore in ``finally``.

Every attack is an :class:`Attack` subclass, which owns the loop: it measures the original and
the oracle once (those measurements are the attack's ``references``, JSON values, so an
experiment computes them once per target, stores them and shares them across its cells), then
visits the unlearned models one at a time: ``measure`` each, ``score`` it against the two
references. Each measurement runs with only the model it measures on the device; the others
are off it meanwhile (``subject/residency.py``), and what an attack compares with the original
it keeps from ``setup`` (the original's activations, located vectors, parked weights). Adding
an attack is one file in this package with ``@register_attack`` on its class (or a module named
by an ``unlearn_audit.attacks`` entry point).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from .. import progress
from ..errors import UserInputError
from ..params import MAX_SEED, validate_params
from ..registry import Registry
from ..results.schema import AttackDeclaration
from ..subject.lora import is_peft, merged_in_place
from ..subject.residency import resident


def is_ensemble(model) -> bool:
    """Whether ``model`` is an ensemble of models (``subject/ensemble.py``; checked by its config,
    so that importing attacks imports no model code)."""
    return getattr(getattr(model, "config", None), "model_type", None) == "unlearn_audit_ensemble"


NOT_APPLICABLE = {"recovery": None, "residual": None, "not_applicable": "ensemble"}


class AttackParams(BaseModel):
    """An attack's settings (pydantic: unknown keys, out-of-range numbers, NaN and inf are errors)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=MAX_SEED)


class Attack:
    """An attack as two steps: ``measure`` one model, ``score`` an unlearned model's measurement
    against the original's and the oracle's. Subclasses set ``name``, ``Params``, ``summary``
    and (when the headline is not ``residual``) ``declaration``, and are registered with
    :func:`register_attack`.

    Measurements are JSON values (stored with an experiment's shared work); ``measure`` returns
    None for a role it has nothing to measure on (patching measures unlearned models only).
    ``setup`` builds what every measurement of one (original, target, params) needs (evaluation
    suites, prompts, the original's activations); it is called once per ``run``.
    """

    name: str
    Params: type[AttackParams] = AttackParams
    summary: str = ""
    declaration = AttackDeclaration()
    # the attack reads or edits weights one by one: a subject with LoRA adapters is measured
    # with its adapters merged into its weights, in place (``subject/lora.py: merged_in_place``)
    merged_weights: bool = False
    # the attack reads one model's internals (activations, layers, weights by name): an ensemble
    # of several models (SISA's, ``subject/ensemble.py``) has no single set, so its result is
    # null with "not_applicable": "ensemble"
    needs_internals: bool = False

    def _measure(self, subject, setup: Any, params, role: str) -> dict | None:
        """``measure`` with only ``subject`` on the device: every other model is off it
        meanwhile (``subject/residency.py``)."""
        # getattr: a subject without a model (the loop's tests use fake ones) has nothing to move
        with resident(getattr(subject, "model", None)):
            if self.merged_weights and is_peft(subject.model):
                with merged_in_place(subject.model):
                    return self.measure(subject, setup, params, role)
            return self.measure(subject, setup, params, role)

    def _setup(self, original, target, params, references: dict | None = None) -> Any:
        if self.needs_internals and is_ensemble(getattr(original, "model", None)):
            return NOT_APPLICABLE  # nothing to set up on: every result is not applicable
        with resident(getattr(original, "model", None)):
            return self.setup(original, target, params, references)

    def params(self, values: Mapping[str, Any] | None = None) -> AttackParams:
        return validate_params(self.Params, values, f"attack {self.name!r}")

    def setup(self, original, target, params, references: dict | None = None) -> Any:
        return None

    def measure(self, subject, setup: Any, params, role: str) -> dict | None:
        """One model's measurement; ``role`` is ``original``, ``oracle`` or ``unlearned``."""
        raise NotImplementedError

    def score(self, unlearned: dict, original: dict | None, oracle: dict | None, setup: Any, params,
              name: str) -> dict:
        """The result of unlearned model ``name``: at least ``recovery`` and ``residual``."""
        raise NotImplementedError

    def baselines(self, references: dict, setup: Any, params) -> dict:
        """What the results document shows of the original and the oracle (their measurements)."""
        return references

    def references(self, original, oracle, target, params, setup: Any = None) -> dict:
        """``{"original": measurement, "oracle": measurement}`` (no ``oracle`` without one; no
        entry for a role ``measure`` returns None for)."""
        setup = self._setup(original, target, params) if setup is None else setup
        out = {}
        if setup is NOT_APPLICABLE:
            return out
        for role, subject in (("original", original), ("oracle", oracle)):
            if subject is not None and (m := self._measure(subject, setup, params, role)) is not None:
                out[role] = m
        return out

    def run(self, original, unlearned: dict, oracle, target, params, references: dict | None = None) -> dict:
        """``{"methods": {name: result}, "baselines": ...}``; ``references`` from an earlier
        :meth:`references` call with the same original, oracle, target and params."""
        progress.log(f"attack [bold]{self.name}[/]: {self.summary}")
        setup = self._setup(original, target, params, references)
        if references is None:
            references = self.references(original, oracle, target, params, setup)
        base = {k: v for k, v in references.items() if k == "original" or oracle is not None}
        results = {}
        for name, subject in unlearned.items():  # one at a time: only its measurement is kept
            if self.needs_internals and (is_ensemble(getattr(subject, "model", None)) or setup is NOT_APPLICABLE):
                results[name] = dict(NOT_APPLICABLE)
                continue
            results[name] = self.score(self._measure(subject, setup, params, "unlearned"), base.get("original"),
                                       base.get("oracle"), setup, params, name)
        return {"methods": results, "baselines": {} if setup is NOT_APPLICABLE else self.baselines(base, setup, params)}


# every module of this package is imported on first lookup, then third-party entry points; an
# entry is an Attack instance
ATTACKS = Registry("attack", Attack, __package__, "unlearn_audit.attacks", check=type)


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: register an :class:`Attack` subclass under its ``name`` (a second class
    under one name is an error)."""
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"attack {cls!r} is not a subclass of Attack")
    ATTACKS.register(cls.name, cls())
    return cls


def get_attack(name: str) -> Attack:
    if name not in ATTACKS:
        ATTACKS.load()
    if name not in ATTACKS:
        raise UserInputError(f"unknown attack {name!r}; choose one of: {', '.join(attack_names())}")
    return ATTACKS[name]


def attack_fields(name: str) -> list[str]:
    """The parameter names attack ``name`` accepts (old names of renamed ones included)."""
    params = get_attack(name).Params
    return [*params.model_fields, *getattr(params, "RENAMED", {})]


def sample_items(items: Sequence, n: int | None, seed: int) -> list:
    """At most ``n`` of ``items`` (a seeded sample, in their original order); all when ``n`` is None."""
    items = list(items)
    if n is None or len(items) <= n:
        return items
    g = torch.Generator().manual_seed(seed)
    return [items[i] for i in sorted(torch.randperm(len(items), generator=g)[:n].tolist())]


def attack_names() -> list[str]:
    """Every attack, in the listing order of :data:`ORDER` (relearning first; modules it does
    not name come after, by name), whatever order other imports registered them in."""
    from . import ORDER

    ATTACKS.load()
    rank = {f"{__package__}.{m}": i for i, m in enumerate(ORDER)}
    return sorted(ATTACKS, key=lambda n: rank.get(type(ATTACKS[n]).__module__, len(rank)))
