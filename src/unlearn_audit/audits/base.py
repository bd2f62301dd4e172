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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserInputError
from ..params import MAX_SEED, validate_params


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

    def params(self, values: Mapping[str, Any] | None = None) -> AuditParams:
        return validate_params(self.Params, values, f"attack {self.name!r}")


AUDITS: dict[str, AuditSpec] = {}


def register_audit(name: str, params: type[AuditParams], summary: str,
                   references: Callable[..., dict] | None = None):
    """Register ``fn(original, unlearned, oracle, target, params)`` as attack ``name``; with
    ``references``, ``fn`` also takes ``references=`` (the value that function returned)."""
    def wrap(fn):
        AUDITS[name] = AuditSpec(name, fn, params, summary, references)
        return fn
    return wrap


def get_audit(name: str) -> AuditSpec:
    from . import _load_all

    _load_all()
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
    """Every attack, in the order of the audit modules (relearning first), whatever order other
    imports registered them in."""
    from . import _MODULES, _load_all

    _load_all()
    rank = {f"{__package__}.{m}": i for i, m in enumerate(_MODULES)}
    return sorted(AUDITS, key=lambda n: rank.get(AUDITS[n].run.__module__, len(rank)))
