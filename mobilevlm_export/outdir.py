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
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.manifest import MANIFEST, TOOL


def check_output_dir(out: Path, force: bool, inputs: tuple[Path | None, ...] = ()) -> None:
    """``UserError`` unless ``out`` may be written (and, with ``force``, replaced) by a build reading ``inputs``."""
    real = Path(out).resolve()
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
    if real.exists() and not real.is_dir():
        raise UserError(f"-o {out}: exists and is not a directory")
    if not real.parent.is_dir():
        raise UserError(f"-o {out}: parent directory {real.parent} does not exist")
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


def check_output_file(path: Path, flag: str) -> None:
    """``UserError`` naming ``flag`` unless a file can be written at ``path`` (checked by writing a probe beside it,
    so a read-only place is caught even where permission bits do not apply)."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: parent directory {path.parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=True):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot write there ({exc.strerror})") from None


def write_file_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it: ``path`` is never left half-written, and the
    temporary file is removed whatever fails. The file gets the mode a plain ``open`` would give it (0o666 less the
    umask), not the temporary file's 0o600."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
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


class OutputLock:
    """An advisory ``flock`` on ``.NAME.lock`` beside ``out``, held from ``acquire()`` to ``release()``."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.path = self.out.parent / f".{self.out.name}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UserError(f"-o {self.out}: cannot write in {self.path.parent} ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(f"-o {self.out}: another build is writing it (lock {self.path} is held); wait for "
                                "it to finish or choose another -o") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # (else the holder released and removed it between our open and flock: lock the new file)
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


class Staging:
    """Checks ``out``, takes its lock, and yields a staging directory beside it; ``commit()`` swaps it in for
    ``out``; leaving without a commit removes it. ``stale`` lists the leftovers of killed builds it removed."""

    def __init__(self, out: Path, force: bool, inputs: tuple[Path | None, ...] = ()) -> None:
        # resolved once: a symlink as -o names its target, whose lock, staging sibling and commit are the build's
        self.given, self.out, self.force, self.inputs = Path(out), Path(out).resolve(), force, inputs
        self.path = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        self.lock = OutputLock(self.out)
        self.stale: list[str] = []

    def _leftovers(self) -> list[Path]:
        """The staging (``.NAME.partial-PID``) and replaced (``.NAME.old-PID``) directories of killed builds to
        ``out``: with the lock held, no live build owns one."""
        found = []
        for kind in ("partial", "old"):
            prefix = f".{self.out.name}.{kind}-"  # (escaped: -o 'out[1]' must not match another build's)
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
        changed during the build is not replaced)."""
        if self.out.is_dir() and any(self.out.iterdir()):
            if not self.force:
                raise UserError(f"-o {self.out}: was created by someone else during the build; not replaced (the "
                                "build is discarded)")
            _check_ours(self.out)
            aside = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
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
