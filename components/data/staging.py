"""Committing a dataset folder atomically: every writer of a dataset goes through :func:`staging`.

A dataset is written into a hidden temporary folder next to ``out_dir`` and renamed into place at
the end, so a failure leaves nothing behind. Without ``overwrite`` the rename itself is the check
that ``out_dir`` is still absent or empty (rename(2) refuses a non-empty target), so of two imports
into the same new folder exactly one succeeds. Every hidden temporary folder has a sibling
``.lock`` file its owner holds an exclusive ``flock`` on; a process killed mid-import releases it,
and the next import in the same parent folder removes such stale folders (never one whose
lock is held, never a folder without our lock file).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.data.errors import DatasetError

log = logging.getLogger(__name__)


_TEMP_NAME = re.compile(r"^\..+\.(tmp|work|pull|old)-[A-Za-z0-9_]+$")
# A lock file this young may belong to a process that has created but not yet locked it.
_LOCK_GRACE_S = 60.0


@contextmanager
def temp_dir(out_dir: Path, kind: str) -> Iterator[Path]:
    """A hidden folder beside ``out_dir``, locked while this process lives, removed on exit.

    The ``flock`` on ``<folder>.lock`` is taken before the folder exists and the kernel drops it
    when the process dies, however it dies: that is how a later import tells a stale folder
    from one in use.
    """
    parent = out_dir.parent
    fd, lock_s = tempfile.mkstemp(dir=parent, prefix=f".{out_dir.name}.{kind}-", suffix=".lock")
    lock = Path(lock_s)
    path = Path(lock_s[: -len(".lock")])
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.mkdir(path, 0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def clean_stale_temp(parent: Path) -> list[Path]:
    """Remove hidden temp folders in ``parent`` left by imports that were killed.

    Only folders with our ``.lock`` sibling whose lock nobody holds (and that is older than a
    minute) are removed; anything else is left alone.

    Returns:
        The folders removed.
    """
    removed: list[Path] = []
    try:
        candidates = [e for e in os.scandir(parent) if e.name.startswith(".") and e.name.endswith(".lock")]
    except FileNotFoundError:
        return removed
    for entry in candidates:
        name = entry.name[: -len(".lock")]
        if not _TEMP_NAME.match(name):
            continue
        try:
            if time.time() - entry.stat().st_mtime < _LOCK_GRACE_S:
                continue
            fd = os.open(entry.path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive
            try:
                same = os.fstat(fd).st_ino == os.stat(entry.path).st_ino
            except FileNotFoundError:
                same = False  # the owner finished and removed it meanwhile
            if same:
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
                os.unlink(entry.path)
                removed.append(Path(parent) / name)
        finally:
            os.close(fd)
    if removed:
        log.info("removed %d stale temp folder(s) of killed imports in %s", len(removed), parent)
    return removed


def check_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse an ``out_dir`` that is a file, or a non-empty folder without ``overwrite``; clean stale temps.

    Raises:
        DatasetError: Naming ``out_dir`` and what to do instead.
    """
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DatasetError("output path exists and is not a folder", file=out_dir)
        if any(out_dir.iterdir()) and not overwrite:
            raise DatasetError("output folder is not empty; choose another --out or pass --overwrite", file=out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(out_dir.parent)


@contextmanager
def staging(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp folder beside ``out_dir``; on success it replaces ``out_dir``, else it is removed."""
    check_target(out_dir, overwrite)
    with temp_dir(out_dir, "tmp") as stage:
        yield stage
        commit(stage, out_dir, overwrite)


def commit(stage: Path, out_dir: Path, overwrite: bool) -> None:
    """Move ``stage`` to ``out_dir`` in one rename.

    Raises:
        DatasetError: Without ``overwrite``, when ``out_dir`` was filled since the start (by a
            concurrent import): the rename refuses, and the other import's result stands.
    """
    if overwrite and out_dir.exists() and any(out_dir.iterdir()):
        with temp_dir(out_dir, "old") as trash:
            os.replace(out_dir, trash)  # onto the empty placeholder: atomic
            os.replace(stage, out_dir)
        return
    try:
        # rename(2) replaces a missing or empty folder atomically and refuses a non-empty one:
        # the check and the commit are this one step.
        os.rename(stage, out_dir)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise DatasetError(
                "output folder was filled by another import while this one ran; nothing was changed. "
                "Choose another --out or pass --overwrite",
                file=out_dir,
            ) from None
        raise
