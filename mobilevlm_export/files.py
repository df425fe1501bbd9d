"""Reading user files safely: only regular files are read.

A FIFO, a character or block device or a socket given where a file is read (a weights file, an image, a recipe,
a tokenizer file, a samples file) would block the reader forever (a FIFO with no writer), or stream without end
(``/dev/zero``). ``regular_file`` refuses such a path in one line (``UserError``) before anything opens it;
``open_regular`` opens without blocking and checks the opened descriptor itself, so a path swapped for a FIFO
between a check and the open cannot hang the reader either. Symbolic links are followed: what counts is the file
they lead to. Torch-free, layer 1.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from pathlib import Path

from mobilevlm_export.errors import UserError

NAME_MAX = 255  # bytes in one path component: Linux's NAME_MAX (limits.h); no Linux filesystem takes longer names
# room for the longest suffix the tool puts after ".STEM": ".partial-" and a PID (up to 20 digits), or mkstemp's
# "." and 8 random characters
_SUFFIX_ROOM = len(".partial-") + 20


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


def sibling_stem(name: str) -> str:
    """The stem of the tool's own files beside ``name`` (``.STEM.lock``, ``.STEM.partial-PID``, ``.STEM.old-PID``,
    ``.STEM.XXXXXXXX`` temporary files): ``name`` itself where the longest of those fits ``NAME_MAX``, else a
    prefix of it, ``~`` and 16 hex digits of its SHA-256 (deterministic: every build to one ``-o`` shares a lock)."""
    if 1 + len(os.fsencode(name)) + _SUFFIX_ROOM <= NAME_MAX:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    head = name
    while 1 + len(os.fsencode(head)) + 1 + len(digest) + _SUFFIX_ROOM > NAME_MAX:
        head = head[:-1]  # (by characters: a multi-byte character is never cut in half)
    return f"{head}~{digest}"


_KINDS = ((stat.S_ISLNK, "a symbolic link (not followed)"),
          (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def not_regular(mode: int) -> str | None:
    """What a non-regular file is, in words (``None`` for a regular file)."""
    return next((what for test, what in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it: ``path`` is never left half-written, and the
    temporary file is removed whatever fails. The file gets the mode a plain ``open`` would give it (0o666 less the
    umask), not the temporary file's 0o600. What is at ``path`` is replaced only when it is a regular file (else
    ``OSError`` EEXIST): a device, FIFO, socket, directory or symlink that appeared there is left as it is."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{sibling_stem(path.name)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            what = not_regular(os.lstat(path).st_mode)
        except FileNotFoundError:
            what = None
        if what is not None:
            raise OSError(errno.EEXIST, f"it is {what}, not replaced", str(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read from /proc where it is shown (setting it to read it back is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
