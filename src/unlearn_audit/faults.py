"""Named points where a test can make the process die, to check that a killed run resumes.

``UNLEARN_AUDIT_KILL_AT=<point>[:<n>]`` makes the process send itself SIGKILL the ``n``-th time
(default: the first) it reaches ``point``: ``step`` (after an optimiser step of the training
loop, in unlearning or relearning), ``attack`` (before each attack of a cell) or ``write`` (a file
written atomically, a sealed cell among them, between writing its temporary sibling and renaming
it into place). Unset (always, outside the fault tests), :func:`point` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def point(name: str) -> None:
    """Die here when ``UNLEARN_AUDIT_KILL_AT`` asks for this point (see the module docstring)."""
    spec = os.environ.get("UNLEARN_AUDIT_KILL_AT")
    if not spec:
        return
    want, _, nth = spec.partition(":")
    if want != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
