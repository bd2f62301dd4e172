"""Validating a method's or an attack's parameters into its pydantic model, with one-line errors.

Every numeric parameter carries its bounds in its declaration (``Field(ge=..., le=...)``), and
the base classes refuse NaN and infinity, so a value that cannot give a meaningful number fails
at validation: before any model is loaded, and in an experiment file before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import UserInputError

MAX_SEED = 2**32 - 1      # numpy's seed range
MAX_STEPS = 1_000_000     # the most optimiser steps (or relearning checkpoint) a parameter may ask for


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
        raise UserInputError(f"{what} parameter {key!r}: {err['msg'].removeprefix('Value error, ')}") from None
