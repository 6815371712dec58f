"""Temporary files and folders for atomic writes, with the permissions of a plain open().

``tempfile.mkstemp`` / ``mkdtemp`` create 0600 files and 0700 folders
whatever the umask; renamed into place, results would be private to their
writer. These helpers give them the mode ``open()`` / ``os.makedirs`` would
(0666 / 0777 minus the umask).
"""
from __future__ import annotations

import os
import shutil
import tempfile


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
    """Removes a file or folder (if present). A link to a folder (e.g. checkpoints
    kept on another disk) keeps the link and its target folder and loses only
    what the target holds; a link to a file (or a broken link) is unlinked."""
    if os.path.islink(path):
        if os.path.isdir(path):
            clear_dir(path, follow_links=False)
        else:
            os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def clear_dir(path: str | os.PathLike, *, follow_links: bool = True) -> None:
    """Removes everything inside folder ``path`` (if it exists), keeping the folder
    itself (a command's lock is on it). An entry that links to a folder keeps
    its link and target, emptied (``follow_links``; links inside it are
    unlinked, so a link cycle cannot recurse)."""
    if os.path.isdir(path):
        for entry in os.scandir(path):
            if entry.is_symlink() and entry.is_dir() and follow_links:
                clear_dir(entry.path, follow_links=False)
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
