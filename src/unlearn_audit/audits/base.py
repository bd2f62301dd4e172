"""The audit (attack) registry.

An audit takes the original subject, the unlearned subjects (by method name), the oracle
(or None) and the target, and returns one result per method with at least ``recovery`` and
``residual`` (see :mod:`unlearn_audit.metrics.recovery`). Audits never mutate a subject: they
train copies, or patch and restore in ``finally``. One audit may register several attack
names (relearning registers ``rtt``, ``forget_data`` and ``unrelated``).

An audit whose work on the original and the oracle does not depend on the unlearned model
(relearning curves of the original and oracle, their logit lens) declares it as
``references``: a function ``(original, oracle, target, params) -> dict`` of JSON values, which
``run`` then accepts as ``references=``. Many methods audited on one target then share it:
computed once, stored with an experiment's run, and reused when the run resumes.

Most attacks measure each model on its own and then compare the numbers: they subclass
:class:`Attack`, which owns that loop. It measures the original and the oracle once (their
measurements are the attack's ``references``, so an experiment shares them across cells), then
visits the unlearned models one at a time: ``measure`` each, ``score`` it against the two
references.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserInputError
from ..params import MAX_SEED, validate_params
from ..registry import Registry
from ..results.schema import AttackDeclaration


class AuditParams(BaseModel):
    """An attack's settings (pydantic: unknown keys, out-of-range numbers, NaN and inf are errors)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    seed: int = Field(0, ge=0, le=MAX_SEED)


@dataclass(frozen=True)
class AuditSpec:
    name: str
    run: Callable[..., dict[str, dict]]  # (original, unlearned: dict, oracle, target, params) -> {method: result}
    Params: type[AuditParams]
    summary: str
    references: Callable[..., dict] | None = None  # (original, oracle, target, params) -> JSON dict
    declaration: AttackDeclaration = AttackDeclaration()  # how its result is read (headline, label, better)

    def params(self, values: Mapping[str, Any] | None = None) -> AuditParams:
        return validate_params(self.Params, values, f"attack {self.name!r}")


# every module of this package is imported on first lookup, then third-party entry points; an
# entry is an AuditSpec, checked by its parameters' class
AUDITS = Registry("attack", AuditParams, __package__, "unlearn_audit.attacks", check=lambda spec: spec.Params)


def register_audit(name: str, params: type[AuditParams], summary: str,
                   references: Callable[..., dict] | None = None,
                   declaration: AttackDeclaration = AttackDeclaration()):
    """Register ``fn(original, unlearned, oracle, target, params)`` as attack ``name``; with
    ``references``, ``fn`` also takes ``references=`` (the value that function returned)."""
    def wrap(fn):
        AUDITS.register(name, AuditSpec(name, fn, params, summary, references, declaration))
        return fn
    return wrap


class Attack:
    """An attack as two steps: ``measure`` one model, ``score`` an unlearned model's measurement
    against the original's and the oracle's. Subclasses set ``name``, ``Params`` and ``summary``
    and are registered with :func:`register_attack`.

    Measurements are JSON values (stored with an experiment's shared work). ``setup`` builds what
    every measurement of one (original, target, params) needs (evaluation suites, prompts); it is
    called once per ``run`` and must be cheap, or take what it needs from ``references``.
    """

    name: str
    Params: type[AuditParams] = AuditParams
    summary: str = ""
    declaration = AttackDeclaration()

    def setup(self, original, target, params, references: dict | None = None) -> Any:
        return None

    def measure(self, subject, setup: Any, params, role: str) -> dict:
        """One model's measurement; ``role`` is ``original``, ``oracle`` or ``unlearned``."""
        raise NotImplementedError

    def score(self, unlearned: dict, original: dict, oracle: dict | None, setup: Any, params) -> dict:
        """The result of one unlearned model: at least ``recovery`` and ``residual``."""
        raise NotImplementedError

    def references(self, original, oracle, target, params, setup: Any = None) -> dict:
        """``{"original": measurement, "oracle": measurement}`` (no ``oracle`` without one)."""
        setup = self.setup(original, target, params) if setup is None else setup
        out = {"original": self.measure(original, setup, params, "original")}
        if oracle is not None:
            out["oracle"] = self.measure(oracle, setup, params, "oracle")
        return out

    def run(self, original, unlearned: dict, oracle, target, params, references: dict | None = None) -> dict:
        setup = self.setup(original, target, params, references)
        if references is None:
            references = self.references(original, oracle, target, params, setup)
        base = {k: v for k, v in references.items() if k == "original" or oracle is not None}
        results = {name: self.score(self.measure(subject, setup, params, "unlearned"), base["original"],
                                    base.get("oracle"), setup, params)
                   for name, subject in unlearned.items()}
        return {"methods": results, "baselines": base}


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Register an :class:`Attack` subclass under its ``name``."""
    if not issubclass(cls, Attack):
        raise TypeError(f"attack {cls!r} is not a subclass of Attack")
    attack = cls()
    AUDITS.register(cls.name, AuditSpec(cls.name, attack.run, cls.Params, cls.summary,
                                 lambda original, oracle, target, params: attack.references(original, oracle, target, params),
                                 cls.declaration))
    return cls


def get_audit(name: str) -> AuditSpec:
    if name not in AUDITS:
        AUDITS.load()
    if name not in AUDITS:
        raise UserInputError(f"unknown attack {name!r}; choose one of: {', '.join(audit_names())}")
    return AUDITS[name]


def sample_items(items: Sequence, n: int | None, seed: int) -> list:
    """At most ``n`` of ``items`` (a seeded sample, in their original order); all when ``n`` is None."""
    items = list(items)
    if n is None or len(items) <= n:
        return items
    g = torch.Generator().manual_seed(seed)
    return [items[i] for i in sorted(torch.randperm(len(items), generator=g)[:n].tolist())]


def audit_names() -> list[str]:
    """Every attack, in the listing order of :data:`ORDER` (relearning first; modules it does
    not name come after, by name), whatever order other imports registered them in."""
    from . import ORDER

    AUDITS.load()
    rank = {f"{__package__}.{m}": i for i, m in enumerate(ORDER)}

    def module(name: str) -> str:
        run = AUDITS[name].run
        return type(run.__self__).__module__ if isinstance(getattr(run, "__self__", None), Attack) else run.__module__

    return sorted(AUDITS, key=lambda n: rank.get(module(n), len(rank)))
