"""The Python API that the CLI is a thin layer over."""

from __future__ import annotations

import os

from .data.target import Target, load_target
from .subject.organism import organism_world
from .subject.subject import Subject


def target_for(spec: str | os.PathLike, subject: Subject | None = None, seed: int = 0) -> Target:
    """Load a target; a ``world:<concept>`` spec naming no preset or seed resolves in the world
    the subject was trained on when the subject is an organism (so ``world:0`` always means the
    first concept of *that* organism's world)."""
    world = organism_world(subject) if subject is not None else None
    return load_target(spec, world=world, seed=seed)
