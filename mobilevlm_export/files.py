"""Reading user files safely: only regular files are read.

A FIFO, a character or block device or a socket given where a file is read (a weights file, an image, a recipe,
a tokenizer file, a samples file) would block the reader forever (a FIFO with no writer), or stream without end
(``/dev/zero``). ``regular_file`` refuses such a path in one line (``UserError``) before anything opens it;
``open_regular`` opens without blocking and checks the opened descriptor itself, so a path swapped for a FIFO
between a check and the open cannot hang the reader either. Symbolic links are followed: what counts is the file
they lead to. Torch-free, layer 1.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from mobilevlm_export.errors import UserError


def _kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _where(path: Path, named: str | None) -> str:
    return f"{named} {path}" if named else str(path)


def regular_file(path: str | Path, named: str | None = None) -> Path:
    """``path`` when it is (a link to) a regular file. ``UserError`` ("[NAMED ]PATH: why", ``named`` the flag or
    file key that gave the path) when it does not exist, cannot be examined, or is a FIFO, device, socket or
    directory. Never opens the file (``os.stat`` does not block on a FIFO)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{_where(path, named)}: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name; OSError: a loop, a long name, EACCES
        raise UserError(f"{_where(path, named)}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{_where(path, named)}: no such file (it is a directory)")
    if not stat.S_ISREG(mode):
        raise UserError(f"{_where(path, named)}: is {_kind(mode)}, not a regular file; refusing to read it")
    return path


def is_regular(path: str | Path) -> bool:
    """Whether ``path`` exists and is (a link to) a regular file (``Path.is_file``, which also answers False for
    a FIFO or device); see ``regular_file`` for the error naming what it is instead."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_regular(path: str | Path, named: str | None = None):
    """``path`` opened for binary reading when it is a regular file: opened non-blocking (a FIFO opens without
    waiting for a writer), the descriptor checked with ``fstat``, then switched back to blocking reads.
    ``UserError`` as ``regular_file``'s."""
    path = regular_file(path, named)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UserError(f"{_where(path, named)}: cannot read it ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped since the check
            raise UserError(f"{_where(path, named)}: is {_kind(mode)}, not a regular file; refusing to read it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def present(path: str | Path) -> bool:
    """Whether anything is at ``path`` (a dangling link included), so that what is there, if not a regular file,
    is refused by ``regular_file`` instead of being taken for absent (``Path.is_file`` answers False for a FIFO)."""
    try:
        return os.path.lexists(path)
    except ValueError:  # a NUL byte in the name
        return False


def sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (the manifest's artifact hashes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
