"""Unlearning methods, one file each, registered by name (``get_method("npo")``)."""

from __future__ import annotations

from .base import (
    REGISTRY,
    FineTuneMethod,
    Method,
    MethodParams,
    get_method,
    method_names,
    register_method,
)

__all__ = ["REGISTRY", "FineTuneMethod", "Method", "MethodParams", "get_method", "method_names",
           "register_method"]
