"""The file-system edge of the tool: reading the user's text files, preparing output
directories, writing files atomically.

Two promises rest on this module (README, "Conventions"; docs/experiments.md, resuming):

- **Bad input is one line.** Every text file a user hands us (experiment files, target JSONL,
  ``target.json``, ``results.json``) is read by :func:`read_text`, which turns undecodable
  bytes and unreadable paths into a :class:`UserInputError` naming the file (and for bad
  bytes the line and byte offset).
- **A user's files are never deleted or overwritten.** Every directory the tool writes its
  outputs to goes through :func:`prepare_output_dir`: a new or empty directory is taken and
  marked as ours (a small :data:`MARKER` file); a non-empty directory is used only when it
  carries our marker (or, for directories written before the marker existed, the file that
  only we write there: ``manifest.json`` of a run, ``unlearn_audit.json`` of a model).
  Files are written through a temporary sibling and an atomic rename (:func:`atomic_path`),
  so a killed process or a full disk leaves the old file or the whole new one.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import faults
from .errors import UserInputError

MARKER = ".unlearn-audit"  # in every output directory this tool created
# what only this tool writes into a directory of that kind (directories from before the marker)
LEGACY_MARKERS = {"run": "manifest.json", "model": "unlearn_audit.json"}


def usual_permissions(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file (or directory) the permissions the user's umask asks for: temporary files
    and directories made by ``tempfile`` are owner-only, and written-then-renamed results
    would keep that."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(Path(path), (0o777 if directory else 0o666) & ~mask)


def describe_os_error(e: OSError) -> str:
    """A short, stable description of an OSError ("a symlink loop", "permission denied")."""
    return {errno.ELOOP: "a symlink loop", errno.ENAMETOOLONG: "a path too long for this file system",
            errno.EISDIR: "a directory, not a file", errno.ENOTDIR: "under a file, not a directory",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EROFS: "on a read-only file system", errno.ENOSPC: "no space left on the device",
            errno.ENOENT: "not found"}.get(e.errno, e.strerror or type(e).__name__)


def is_text(s: str) -> bool:
    """Whether ``s`` can be written as UTF-8 (a lone surrogate such as ``"\\ud800"``, which JSON
    escapes and YAML accept, cannot)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The text of a user's file, decoded as UTF-8.

    Raises:
        UserInputError: the file is missing or unreadable (named with why), or holds bytes that
            are not UTF-8 (named with the line and byte offset of the first bad byte).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except ValueError:  # a NUL byte in the path
        raise UserInputError(f"{what} path {str(path)!r} contains a NUL byte") from None
    except OSError as e:
        raise UserInputError(f"{what} {path}: cannot read it ({describe_os_error(e)})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserInputError(f"{what} {path} line {line} (byte {e.start}): not UTF-8 text "
                             f"(byte 0x{data[e.start]:02x}); save it as UTF-8") from None


def read_json(path: str | os.PathLike, what: str = "file"):
    """:func:`read_text` then ``json.loads``, with a one-line error for bad JSON."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserInputError(f"{what} {path} line {e.lineno}: not valid JSON ({e.msg})") from None


def marker(path: Path) -> dict | None:
    """The marker of an output directory of ours (``{"kind": ..., ...}``), else None."""
    try:
        doc = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("written_by") == "unlearn-audit" else None


def is_ours(path: Path, kind: str | None = None) -> bool:
    """Whether directory ``path`` was written by this tool (as a ``kind`` directory, if given)."""
    mark = marker(path)
    if mark is not None:
        return kind is None or mark.get("kind") == kind
    legacy = [LEGACY_MARKERS[kind]] if kind in LEGACY_MARKERS else list(LEGACY_MARKERS.values())
    return any((path / name).is_file() for name in legacy)


def _check_path(path: Path, flag: str) -> None:
    """Refuse a path the OS would refuse, before anything is written."""
    s = str(path)
    if "\x00" in s:
        raise UserInputError(f"{flag} path contains a NUL byte; give a plain directory path")
    if not is_text(s):
        raise UserInputError(f"{flag} path {s!r} is not valid text; give a plain directory path")
    if len(os.fsencode(str(path.absolute()))) >= 4096:
        raise UserInputError(f"{flag} path is longer than 4096 bytes; give a shorter path")
    limit = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise UserInputError(f"{flag} {part[:40]}...: a path component longer than {limit} bytes; "
                                 "give a shorter path (or a shorter experiment name)")


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _check_writable(directory: Path, flag: str, shown: Path) -> None:
    """Create and remove a temporary directory in ``directory``: the only test of writability
    that holds for root, read-only mounts and full disks alike."""
    try:
        probe = tempfile.mkdtemp(prefix=".unlearn-audit-probe-", dir=directory)
    except OSError as e:
        raise UserInputError(f"{flag} {shown}: cannot write in {directory} ({describe_os_error(e)}); "
                             "choose a writable directory") from None
    os.rmdir(probe)


def prepare_output_dir(path: str | os.PathLike, kind: str, flag: str = "--out", create: bool = True) -> Path:
    """Check that ``path`` can take this tool's outputs and (with ``create``) make it.

    Accepted: a path that does not exist yet (its parents are made), an empty directory, or a
    directory this tool wrote (:func:`is_ours`). Refused, with one line saying what to do: a
    file, a path under a file, a symlink loop, a path too long or holding a NUL byte, a
    directory that cannot be written, and a non-empty directory of someone else's.

    Args:
        kind: ``run`` (results of ``run``/``demo``/``audit``), ``model`` (``unlearn``) or
            ``world`` (``world export``); written into the marker.
        flag: how the user gave the path, for messages.
        create: make the directory (and its marker) now; ``False`` only checks.
    """
    path = Path(path).expanduser()
    _check_path(path, flag)
    try:
        if path.is_symlink() and not path.exists():
            os.stat(path)  # raises: a dangling link or a loop
        if path.exists() and not path.is_dir():
            raise UserInputError(f"{flag} {path} is a file, not a directory; give a directory path")
        if path.is_dir():
            entries = [p.name for p in path.iterdir()]
            if entries and not is_ours(path, kind):
                shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
                other = marker(path)
                why = (f"was written by unlearn-audit as a {other.get('kind')} directory, not a {kind} directory"
                       if other else "was not written by unlearn-audit")
                raise UserInputError(f"{flag} {path} is not empty ({shown}) and {why}; give a new or "
                                     "empty directory (nothing was changed)")
            _check_writable(path, flag, path)
        else:
            ancestor = _nearest_existing(path)
            if not ancestor.is_dir():
                raise UserInputError(f"{flag} {path}: {ancestor} is a file, not a directory; give another path")
            _check_writable(ancestor, flag, path)
    except OSError as e:
        raise UserInputError(f"{flag} {path}: {describe_os_error(e)}; give another path") from None
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not (path / MARKER).exists():
                write_text_atomic(path / MARKER, json.dumps({"written_by": "unlearn-audit", "kind": kind}) + "\n")
        except OSError as e:
            raise UserInputError(f"{flag} {path}: {describe_os_error(e)}; give another path") from None
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends
    without an error, removed when it raises (a reader never sees half a file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        usual_permissions(tmp)
        faults.point("write")  # written, not yet in place
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# what save_pretrained writes for a model and its tokenizer (model directories written before
# the marker listed its files)
_MODEL_FILES = ("config.json", "generation_config.json", "unlearn_audit.json", "interventions.safetensors",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "vocab.txt",
                "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model",
                "model.safetensors.index.json")


def files_under(path: Path) -> list[str]:
    """Every file under ``path``, as sorted relative POSIX paths."""
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir())


def foreign_files(path: Path) -> list[str]:
    """Files in a model directory of ours that this tool did not write there."""
    mark = marker(path) or {}
    if "files" in mark:
        owned = set(mark["files"])
    else:
        owned = set(_MODEL_FILES)
        owned |= {f for f in files_under(path) if "/" not in f and f.startswith("model") and f.endswith(".safetensors")}
    return [f for f in files_under(path) if f != MARKER and f not in owned]


def replace_dir(new: Path, path: Path) -> None:
    """Put directory ``new`` in the place of ``path`` (which may not exist): rename the old one
    aside, rename the new one in, then remove the old one. Callers check first that the old
    one holds only files of ours."""
    import shutil

    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
