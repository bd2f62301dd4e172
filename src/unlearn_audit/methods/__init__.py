"""Unlearning methods, one file each, registered by name (``get_method("npo")``)."""

from __future__ import annotations

import importlib

from .base import (
    REGISTRY,
    FineTuneMethod,
    Method,
    MethodParams,
    get_method,
    method_names,
    register_method,
)

_MODULES = ("none", "gradient_ascent", "gradient_difference", "kl", "npo", "simnpo", "dpo", "rmu", "whp",
            "prune", "control_vector", "memit", "guardrails", "retrain")


def _load_all() -> None:
    for m in _MODULES:
        importlib.import_module(f"{__name__}.{m}")


__all__ = ["REGISTRY", "FineTuneMethod", "Method", "MethodParams", "get_method", "method_names",
           "register_method"]
