"""The declared shape of ``results.json`` (:mod:`.schema`) and the one place it is assembled."""

from .schema import (
    AttackDeclaration,
    AttackResult,
    MethodResult,
    TargetResult,
    declaration,
    target_document,
    validate_target,
)

__all__ = ["AttackDeclaration", "AttackResult", "MethodResult", "TargetResult", "declaration", "target_document",
           "validate_target"]
