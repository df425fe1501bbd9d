"""The output directory of a build: checked before any work, locked for the build, written as a staging sibling,
swapped in at the end.

Rules (a build never deletes what it did not write):

- ``-o`` may not be the filesystem root, the home directory, the current directory or one of its parents, nor
  the checkpoint (or another input) directory or one of its parents; its parent directory must exist.
- An existing non-empty ``-o`` is replaced only with ``--force``, and only when it is a build of ours: it holds
  our ``manifest.json`` and every file in it is listed there. The check is repeated at commit time.
- ``.NAME.lock`` beside ``-o`` is an advisory lock held for the whole build: a second build to the same ``-o``
  fails fast. ``.NAME.partial-PID`` is the staging directory, ``.NAME.old-PID`` the replaced build while the
  staging directory is swapped in; one left by a killed build is removed by the next build to the same ``-o``
  (which holds the lock, so no live build owns it).
- A symlink given as ``-o`` is resolved once: the build lands in the directory it points to (lock and staging
  directory beside that one).
- The lock file is created exclusively (``O_CREAT | O_EXCL``) and never opened through a link (``O_NOFOLLOW``):
  what is already at its name is never truncated or written; a killed build's lock (its PID, or empty) is removed
  and created anew, anything else there (a link, a user's file, a FIFO) is refused naming it.
- The tool's own names beside ``-o`` (lock, staging, replaced build, temporary files) fit ``NAME_MAX``: a name too
  long for that is shortened to a prefix of it and a hash of the whole (the same in every process, so the lock is
  one file). A name in ``-o`` longer than ``NAME_MAX``, a symlink loop and a full disk are bad input (exit 2).
- A report file (``verify --junit``) is written only as a new or regular file outside every input: never a
  device, FIFO, socket, directory or symlink, never inside the build it reports on.
- SIGTERM (a CI timeout, ``kill``) unwinds like Ctrl-C (``on_terminate``), so the staging directory is removed, and
  is never lost: Python ignores an exception raised while a weakref callback or finalizer runs (torch's run often
  during an export), so the signal is also recorded, and ``Staging.commit`` (and the CLI's exit) honour it.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import re
import shutil
import stat
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.files import NAME_MAX, not_regular, sibling_stem
from mobilevlm_export.manifest import MANIFEST, TOOL

# a write that failed for want of room (or a filesystem turned read-only): the environment's, not a bug of ours
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _check_name_lengths(path: Path, where: str) -> None:
    """``UserError`` when a component of ``path`` is longer than ``NAME_MAX`` bytes (the system's ENAMETOOLONG
    would come from deep inside a library, naming nothing)."""
    for part in Path(path).parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            raise UserError(f"{where}: a name in it is {size} bytes, longer than the filesystem's limit of "
                            f"{NAME_MAX} ({part[:40]}...)")


def _resolve(path: Path, where: str) -> Path:
    """``path`` resolved, or ``UserError`` naming it (a symlink loop: Python before 3.13 raises RuntimeError)."""
    try:
        return Path(path).resolve()
    except RuntimeError:
        raise UserError(f"{where}: cannot resolve it (a symbolic link loop)") from None
    except OSError as exc:
        raise UserError(f"{where}: cannot resolve it ({exc.strerror})") from None


def _parent_dir(real: Path, where: str) -> None:
    """``UserError`` unless ``real``'s parent is a directory that can be reached."""
    try:
        st = os.stat(real.parent)
    except FileNotFoundError:
        raise UserError(f"{where}: parent directory {real.parent} does not exist") from None
    except OSError as exc:  # a symlink loop (ELOOP), a file as a directory (ENOTDIR), no search permission
        raise UserError(f"{where}: parent directory {real.parent}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{where}: parent {real.parent} is not a directory")


def check_output_dir(out: Path, force: bool, inputs: tuple[Path | None, ...] = ()) -> None:
    """``UserError`` unless ``out`` may be written (and, with ``force``, replaced) by a build reading ``inputs``."""
    _check_name_lengths(out, f"-o {out}")
    real = _resolve(out, f"-o {out}")
    if real == Path(real.anchor):
        raise UserError(f"-o {out}: is the filesystem root")
    if real == Path.home().resolve():
        raise UserError(f"-o {out}: is the home directory")
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise UserError(f"-o {out}: is the current directory or one of its parents; name a new directory")
    for src in inputs:
        if src is not None and (real == Path(src).resolve() or real in Path(src).resolve().parents):
            raise UserError(f"-o {out}: is the input directory {src} or one of its parents")
    _parent_dir(real, f"-o {out}")
    if real.exists() and not real.is_dir():
        raise UserError(f"-o {out}: exists and is not a directory")
    if real.is_dir() and any(real.iterdir()):
        if not force:
            raise UserError(f"-o {out}: directory exists and is not empty (use --force to replace a previous build)")
        _check_ours(out)


def _check_ours(out: Path) -> None:
    """``UserError`` unless ``out`` is a build of ours holding nothing but the files its manifest lists."""
    manifest = Path(out) / MANIFEST
    try:
        data = json.loads(manifest.read_text())
        listed = {a["path"] for a in data["artifacts"]} if data.get("tool") == TOOL else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        listed = None
    if listed is None:
        raise UserError(f"-o {out}: is not a mobilevlm_export build (no manifest of ours); --force replaces only "
                        "a previous build")
    for path in _files(Path(out)):
        rel = path.relative_to(out).as_posix()
        if rel != MANIFEST and rel not in listed:
            raise UserError(f"-o {out}: holds {rel}, which its build did not write; --force replaces only a "
                            "previous build's own files (move it away first)")


def _files(root: Path) -> list[Path]:
    """Every file and link under ``root`` (links are not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [Path(dirpath) / n for n in filenames]
        found += [Path(dirpath) / n for n in dirnames if (Path(dirpath) / n).is_symlink()]
    return found


def check_output_file(path: Path, flag: str, inputs: tuple[Path | str | None, ...] = ()) -> None:
    """``UserError`` naming ``flag`` unless a file can be written at ``path``: nothing there, or a regular file
    (never a device, FIFO, socket, directory or symlink); not inside (or one of) ``inputs``, the files and
    directories the command reads; a writable place (checked by creating a probe beside it, so a read-only place
    is caught even where permission bits do not apply)."""
    import tempfile

    path = Path(path)
    where = f"{flag} {path}"
    _check_name_lengths(path, where)
    try:
        what = not_regular(os.lstat(path).st_mode)
    except FileNotFoundError:
        what = None
    except OSError as exc:  # a symlink loop or a file on the way (ENOTDIR), no search permission
        raise UserError(f"{where}: {exc.strerror}") from None
    if what is not None:
        raise UserError(f"{where}: is {what}; only a new or regular file is written")
    real = _resolve(path.parent, where) / path.name
    _parent_dir(real, where)
    for src in inputs:
        if src is None:
            continue
        try:
            inside = Path(src).resolve()
        except (OSError, RuntimeError):  # (an input that cannot be resolved is refused where it is read)
            continue
        if real == inside or inside in real.parents:
            raise UserError(f"{where}: is inside {src}, which this command reads; write the report elsewhere")
    try:
        with tempfile.NamedTemporaryFile(dir=real.parent, prefix=f".{sibling_stem(path.name)}.", delete=True):
            pass
        if os.path.lexists(real) and not os.access(real, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise UserError(f"{where}: cannot write there ({exc.strerror})") from None


class OutputLock:
    """An advisory ``flock`` on ``.NAME.lock`` beside ``out``, held from ``acquire()`` to ``release()``.

    The file is created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``) and only the file this lock created gets
    its PID and is removed on release: a link planted at its name is never followed, a file there never truncated.
    One found there that nobody holds is a killed build's when it holds a PID (or nothing): it is removed and the
    lock created anew; anything else is refused (exit 2) naming it."""

    _FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out.parent / f".{sibling_stem(self.out.name)}.lock"
        self._fd: int | None = None

    def _refuse(self, why: str) -> UserError:
        return UserError(f"-o {self.out}: its lock file {self.path} {why}")

    def _open(self) -> tuple[int, bool] | None:
        """(fd, created): a new lock file, or the regular file already there (opened read-only: never written);
        ``None`` when it went away between the two opens."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | self._FLAGS, 0o644), True
        except FileExistsError:
            pass
        except OSError as exc:
            raise UserError(f"-o {self.out}: cannot write in {self.path.parent} (creating its lock file "
                            f"{self.path.name}: {exc.strerror})") from None
        try:
            what = not_regular(os.lstat(self.path).st_mode)  # (before opening: a device is not even opened)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._refuse(f"cannot be read ({exc.strerror})") from None
        if what is not None:
            raise self._refuse(f"is {what}; not ours, left as it is (remove it to build here)")
        try:
            fd = os.open(self.path, os.O_RDONLY | self._FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:  # (ELOOP: a link swapped in after the check above)
            raise self._refuse(f"cannot be opened ({exc.strerror})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._refuse("is not a regular file; remove it")
        return fd, False

    def _is_ours(self, fd: int) -> bool:
        """Whether ``fd``'s file is still the one at ``self.path`` (not removed or replaced since it was opened)."""
        try:
            st, mine = os.stat(self.path, follow_symlinks=False), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def acquire(self) -> None:
        while True:
            opened = self._open()
            if opened is None:
                continue
            fd, created = opened
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(f"-o {self.out}: another build is writing it (lock {self.path} is held); wait for "
                                "it to finish or choose another -o") from None
            if not self._is_ours(fd):  # the holder released and removed it between our open and flock: again
                os.close(fd)
                continue
            if created:
                break
            # a lock file nobody holds: a killed build's holds its PID (or nothing, killed before writing it)
            content = os.read(fd, 64)
            if not re.fullmatch(rb"[0-9]{0,20}\n?", content):
                os.close(fd)
                raise self._refuse("is not a lock of ours (it holds more than a PID), left as it is (move it away "
                                   "to build here)")
            os.unlink(self.path)  # (while holding it: a build that opened it too finds it gone and starts again)
            os.close(fd)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # (a full disk: the lock made here goes, named)
            self._fd = fd
            self.release()
            raise self._refuse(f"cannot be written ({exc.strerror})") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            if self._is_ours(self._fd):
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


_TERMINATED: list[int] = []  # the signals on_terminate received, in order


def on_terminate(signum: int, _frame=None) -> None:
    """The CLI's SIGTERM handler: raise ``SystemExit(128 + signum)`` where the process is, after recording the
    signal for ``raise_if_terminated`` (in case that exception lands in a callback that ignores it)."""
    _TERMINATED.append(signum)
    raise SystemExit(128 + signum)


def raise_if_terminated() -> None:
    """``SystemExit(128 + signum)`` if ``on_terminate`` has run, though its own exception was swallowed."""
    if _TERMINATED:
        raise SystemExit(128 + _TERMINATED[0])


class Staging:
    """Checks ``out``, takes its lock, and yields a staging directory beside it; ``commit()`` swaps it in for
    ``out``; leaving without a commit removes it. ``stale`` lists the leftovers of killed builds it removed."""

    def __init__(self, out: Path, force: bool, inputs: tuple[Path | None, ...] = ()) -> None:
        # resolved once: a symlink as -o names its target, whose lock, staging sibling and commit are the build's
        self.given, self.force, self.inputs = Path(out), force, inputs
        _check_name_lengths(out, f"-o {out}")
        self.out = _resolve(out, f"-o {out}")
        self.stem = sibling_stem(self.out.name)
        self.path = self.out.parent / f".{self.stem}.partial-{os.getpid()}"
        self.lock = OutputLock(self.out)
        self.stale: list[str] = []

    def _leftovers(self) -> list[Path]:
        """The staging (``.NAME.partial-PID``) and replaced (``.NAME.old-PID``) directories of killed builds to
        ``out``: with the lock held, no live build owns one."""
        found = []
        for kind in ("partial", "old"):
            prefix = f".{self.stem}.{kind}-"  # (escaped: -o 'out[1]' must not match another build's)
            found += [p for p in self.out.parent.glob(glob.escape(prefix) + "*") if p.name[len(prefix):].isdigit()]
        return sorted(found)

    def __enter__(self) -> Path:
        check_output_dir(self.given, self.force, self.inputs)
        self.lock.acquire()
        try:
            for old in self._leftovers():
                try:
                    shutil.rmtree(old)
                except OSError:  # (not ours to remove after all, or half removed: not recorded as removed)
                    continue
                self.stale.append(old.name)
            self.path.mkdir()
        except OSError as exc:
            self.lock.release()
            raise UserError(f"-o {self.out}: cannot write in {self.out.parent} ({exc.strerror})") from None
        return self.path

    def commit(self) -> None:
        """Swap the staging directory in for ``out`` (the output checks are repeated: a directory that appeared or
        changed during the build is not replaced). Not after a SIGTERM (``raise_if_terminated``)."""
        raise_if_terminated()
        if self.out.is_dir() and any(self.out.iterdir()):
            if not self.force:
                raise UserError(f"-o {self.out}: was created by someone else during the build; not replaced (the "
                                "build is discarded)")
            _check_ours(self.out)
            aside = self.out.parent / f".{self.stem}.old-{os.getpid()}"
            self.out.rename(aside)
            self.path.rename(self.out)
            shutil.rmtree(aside)
            return
        if self.out.is_dir():
            self.out.rmdir()
        elif self.out.exists():
            raise UserError(f"-o {self.out}: a file was created there during the build; not replaced")
        self.path.rename(self.out)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.path.exists():
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self.lock.release()
        if isinstance(exc, OSError) and exc.errno in NO_ROOM:  # a full disk is bad input, named, not a bug (3)
            raise UserError(f"-o {self.given}: cannot write the build there ({exc.strerror}); the build is "
                            "discarded") from None
