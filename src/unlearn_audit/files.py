"""Small file-system helpers shared by the writers of models and run directories."""

from __future__ import annotations

import os
from pathlib import Path


def usual_permissions(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file (or directory) the permissions the user's umask asks for: temporary files
    and directories made by ``tempfile`` are owner-only, and written-then-renamed results
    would keep that."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(Path(path), (0o777 if directory else 0o666) & ~mask)
