"""Audits (attacks) on unlearned subjects, one file each, registered by attack name."""

from __future__ import annotations

import importlib

from .base import AUDITS, AuditParams, AuditSpec, audit_names, get_audit, register_audit

_MODULES = ("relearn", "patching", "logit_lens", "ablation", "probe", "concept_vectors", "in_context", "quantize",
            "mia", "weight_distance")


def _load_all() -> None:
    for m in _MODULES:
        importlib.import_module(f"{__name__}.{m}")


__all__ = ["AUDITS", "AuditParams", "AuditSpec", "audit_names", "get_audit", "register_audit"]
