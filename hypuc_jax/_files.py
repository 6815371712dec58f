"""Temporary files and folders for atomic writes, with the permissions of a plain open().

``tempfile.mkstemp`` / ``mkdtemp`` create 0600 files and 0700 folders
whatever the umask; renamed into place, results would be private to their
writer. These helpers give them the mode ``open()`` / ``os.makedirs`` would
(0666 / 0777 minus the umask).
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import tempfile
import uuid

# A folder being deleted is first renamed to NAME + TRASH_MARK + a unique tag, so a stop
# part-way through leaves no half-deleted folder under its own name.
TRASH_MARK = ".deleting-"
_TRASH = re.compile(re.escape(TRASH_MARK) + r"\d+-[0-9a-f]{8}$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_file(directory: str | os.PathLike, prefix: str = "", suffix: str = "") -> str:
    """Creates an empty file in ``directory`` (mode 0666 & ~umask); returns its path."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    os.close(fd)
    os.chmod(path, 0o666 & ~_umask())
    return path


def temp_dir(directory: str | os.PathLike, prefix: str = "") -> str:
    """Creates an empty folder in ``directory`` (mode 0777 & ~umask); returns its path."""
    path = tempfile.mkdtemp(prefix=prefix, dir=directory)
    os.chmod(path, 0o777 & ~_umask())
    return path


def write_text_atomic(path: str | os.PathLike, text: str, prefix: str = "") -> None:
    """Writes ``text`` to ``path`` via a temporary file in its folder and ``os.replace``:
    readers see the old file or the new one, never a torn one. ``prefix``: of the
    temporary file's name (for readers that must skip it)."""
    tmp = temp_file(os.path.dirname(os.path.abspath(path)), prefix=prefix, suffix=".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_path(path: str | os.PathLike) -> None:
    """Removes a file or folder (if present; one removed meanwhile, e.g. by another
    process, is not an error). A folder is renamed away first (one atomic step;
    the deletion then runs on the new name, see ``remove_trash``), so a stop
    mid-way never leaves part of it under its name; a mount point, which cannot
    be renamed, is emptied in place. A link to a folder (e.g. checkpoints kept on
    another disk) keeps the link and its target folder and loses only what the
    target holds; a link to a file (or a broken link) is unlinked."""
    if os.path.islink(path):
        if os.path.isdir(path):
            clear_dir(path, follow_links=False)
        else:
            _unlink(path)
    elif os.path.isdir(path):
        try:
            trash = move_to_trash(path)
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.EXDEV):
                raise
            clear_dir(path, follow_links=False)   # a mount point: emptied where it is
            return
        if trash is not None:
            _rmtree(trash)
    elif os.path.lexists(path):
        _unlink(path)


def move_to_trash(path: str | os.PathLike) -> str | None:
    """Renames folder ``path`` to a unique trash name beside it (one atomic step) and
    returns that name; None when ``path`` is gone (removed meanwhile by another
    process). ``remove_trash`` deletes such folders."""
    trash = f"{os.fspath(path).rstrip(os.sep)}{TRASH_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return None
    return trash


def holds_trash(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds folders a stopped deletion renamed away."""
    try:
        return any(_TRASH.search(name) for name in os.listdir(directory))
    except OSError:                          # missing, not a folder, or not listable
        return False


def remove_trash(directory: str | os.PathLike, of: str | None = None) -> None:
    """Finishes deletions a stop interrupted: removes the renamed-away folders
    directly inside ``directory`` (those of the folder named ``of`` only, if
    given). A folder another process is deleting at the same time is fine: what
    it removes first is skipped here."""
    if os.path.isdir(directory):
        for entry in os.scandir(directory):
            if (_TRASH.search(entry.name) and (of is None or entry.name.startswith(of + TRASH_MARK))
                    and entry.is_dir(follow_symlinks=False)):
                _rmtree(entry.path)


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _gone_is_fine(func, path, exc) -> None:
    """rmtree error handler: an entry removed meanwhile (by another process) is fine."""
    if not isinstance(exc, FileNotFoundError):
        raise exc


def _rmtree(path) -> None:
    """``shutil.rmtree`` that tolerates entries removed meanwhile."""
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_gone_is_fine)
    else:
        shutil.rmtree(path, onerror=lambda func, p, info: _gone_is_fine(func, p, info[1]))


def clear_dir(path: str | os.PathLike, *, follow_links: bool = True,
              keep: str | None = None) -> None:
    """Removes everything inside folder ``path`` (if it exists) but an entry named
    ``keep``, keeping the folder itself (a command's lock is on it). An entry that
    links to a folder keeps its link and target, emptied (``follow_links``; links
    inside it are unlinked, so a link cycle cannot recurse)."""
    if os.path.isdir(path):
        for entry in os.scandir(path):
            if entry.name == keep:
                continue
            if entry.is_symlink() and entry.is_dir() and follow_links:
                clear_dir(entry.path, follow_links=False)
            elif entry.is_dir(follow_symlinks=False):
                _rmtree(entry.path)
            else:
                _unlink(entry.path)
