"""unlearn-audit: is an unlearned concept gone from a language model, or only hidden?

The Python API mirrors the CLI::

    from unlearn_audit import organism, load_target, unlearn, audit
    full, oracle = organism("default")
    target = load_target("world:0")

Names are imported lazily, so ``import unlearn_audit`` (and ``unlearn-audit --help``) does not
import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "load_subject": "unlearn_audit.organisms",
    "Subject": "unlearn_audit.subject.subject",
    "organism": "unlearn_audit.organisms",
    "load_target": "unlearn_audit.data.target",
    "Target": "unlearn_audit.data.target",
    "build_world": "unlearn_audit.world",
    "evaluate": "unlearn_audit.metrics.behaviour",
    "unlearn": "unlearn_audit.api",
    "audit": "unlearn_audit.api",
    "target_for": "unlearn_audit.api",
    "UnlearnAuditError": "unlearn_audit.errors",
    "UserInputError": "unlearn_audit.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unlearn_audit' has no attribute {name!r}")
