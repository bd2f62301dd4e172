"""Validating a method's or an attack's parameters into its pydantic model, with one-line errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import UserInputError


def validate_params(model: type[BaseModel], values: Mapping[str, Any] | None, what: str) -> BaseModel:
    """``model(**values)``; the first validation error becomes a :class:`UserInputError` naming
    ``what`` (e.g. ``"method 'npo'"``), the key and, for an unknown key, the valid ones.
    Strings (from the CLI) are coerced by pydantic."""
    try:
        return model(**dict(values or {}))
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":
            raise UserInputError(f"{what} has no parameter {key!r}; its parameters: "
                                 + ", ".join(model.model_fields)) from None
        raise UserInputError(f"{what} parameter {key!r}: {err['msg']}") from None
