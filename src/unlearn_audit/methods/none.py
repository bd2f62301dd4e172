"""``none``: the original model unchanged (a copy), the baseline row of every table."""

from __future__ import annotations

from .base import Method, MethodParams, register_method


@register_method("none")
class NoUnlearning(Method):
    """No unlearning: recovery of any attack is undefined (original == unlearned)."""

    kind = "baseline"
    Params = MethodParams

    def apply(self, unlearned, subject, target, params):
        return None
