"""Issue 24, item 1: every path the tool writes is checked like ``-o``.

``verify --junit PATH`` is written only as a new or regular file outside every input (never a device, FIFO,
socket, directory or symlink, never inside the build it verifies); the build's lock file is never followed or
truncated; the tool's own names beside ``-o`` fit NAME_MAX; a name too long, a symlink loop and a full disk are
exit 2 naming the path; a full, closed or gone stdout ends with one stderr line (2) or quietly (141), never a
traceback. Each case: the exit code, exactly one stderr line naming the flag and path, the hashes of every file
outside ``-o`` (the inputs, the build, the user's files) the same before and after, and no hang (60 s each)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import copy_build
from typer.testing import CliRunner

from mobilevlm_export import outdir
from mobilevlm_export.cli import app
from mobilevlm_export.errors import UserError
from mobilevlm_export.files import NAME_MAX, sibling_stem, write_file_atomic
from mobilevlm_export.manifest import MANIFEST
from mobilevlm_export.outdir import OutputLock, Staging

CLI = [sys.executable, "-m", "mobilevlm_export.cli"]
LIMIT_S = 60
runner = CliRunner()


@pytest.fixture(scope="module")
def built(demo_build_onnx, tmp_path_factory) -> Path:
    """The demo's `export -o DIR` (conftest's, built once per session), copied for the module: cases put links
    and files beside it."""
    return copy_build(demo_build_onnx, tmp_path_factory.mktemp("built") / "demo")


def _cli(*args, timeout: int = LIMIT_S, **kwargs) -> subprocess.CompletedProcess:
    """The CLI in a child process (its exit status as a shell sees it), bounded by ``timeout`` seconds."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    t0 = time.monotonic()
    proc = subprocess.run([*CLI, *map(str, args)], text=True, timeout=timeout, **kwargs)
    assert time.monotonic() - t0 < timeout
    return proc


def _one_line(code: int, stderr: str, expected: int, *needles: str) -> str:
    lines = stderr.strip().splitlines()
    assert code == expected, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr, stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _tree(*roots: Path) -> dict[str, str]:
    """Every entry under ``roots`` (links not followed): a regular file's sha256, a link's target, else its type."""
    seen = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                mode = os.lstat(p).st_mode
                if stat.S_ISREG(mode):
                    seen[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
                elif stat.S_ISLNK(mode):
                    seen[str(p)] = "-> " + os.readlink(p)
                else:
                    seen[str(p)] = f"type {stat.S_IFMT(mode):o} rdev {os.lstat(p).st_rdev}"
    return seen


def _char_device(path: Path) -> Path:
    """A character device node at ``path``: a copy of /dev/full (major 1, minor 7), so that a regression replaces
    a node of the test's, never the system's."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD (not granted here)")
    return path


# ---------------------------------------------------------------------------------------------------- --junit


def _place(kind: str, where: Path) -> Path:
    """A path of ``kind`` in ``where`` (with the user's file ``mine.txt`` beside it) for ``--junit``."""
    (where / "mine.txt").write_text("the user's file")
    path = where / "report.xml"
    if kind == "char-device":
        _char_device(path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":  # (bound in a short directory: AF_UNIX paths are limited to 107 bytes)
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink-to-file":
        path.symlink_to(where / "mine.txt")
    elif kind == "dangling-symlink":
        path.symlink_to(where / "created-through-the-link.xml")
    elif kind == "symlink-to-device":
        path.symlink_to(_char_device(where / "dev"))
    elif kind == "symlink-loop-parent":
        (where / "loop").symlink_to(where / "loop")
        path = where / "loop" / "report.xml"
    elif kind == "name-256":
        path = where / ("r" * 252 + ".xml")
    elif kind == "component-256":
        path = where / ("d" * 256) / "report.xml"
    return path


JUNIT_KINDS = {  # kind: what the message says
    "char-device": "character device",
    "fifo": "FIFO",
    "socket": "socket",
    "directory": "directory",
    "symlink-to-file": "symbolic link",
    "dangling-symlink": "symbolic link",
    "symlink-to-device": "symbolic link",
    "symlink-loop-parent": "symbolic links",
    "name-256": "longer than the filesystem's limit of 255",
    "component-256": "longer than the filesystem's limit of 255",
}


@pytest.mark.parametrize("kind", list(JUNIT_KINDS))
def test_junit_refuses_what_is_not_a_new_or_regular_file(built, kind):
    """`verify DIR --junit PATH` where PATH is a device (the issue's /dev/full, as a copy of that node), a FIFO, a
    socket, a directory, a symlink (to a file, to nothing, to a device), under a symlink loop, or a name longer than
    NAME_MAX: exit 2 before any work, one line naming --junit and PATH; nothing there or in DIR changed."""
    with tempfile.TemporaryDirectory(prefix="mvj") as tmp:
        where = Path(tmp)
        path = _place(kind, where)
        before = _tree(where, built)
        proc = _cli("verify", built, "--junit", path, "--json")
        _one_line(proc.returncode, proc.stderr, 2, "--junit", str(path), JUNIT_KINDS[kind])
        assert json.loads(proc.stdout)["exit_code"] == 2  # (refused before verifying: no report in it)
        assert _tree(where, built) == before
        assert not (where / "created-through-the-link.xml").exists()


@pytest.mark.parametrize("target", ["manifest.json", "graphs/decoder.onnx", "new-report.xml", "golden",
                                    "LINK/manifest.json", "../demo/graphs/../manifest.json"])
def test_junit_inside_the_build_is_refused(built, target):
    """The issue's `--junit DIR/manifest.json` (and DIR's graphs, a new name in DIR, a directory of DIR, DIR through
    a symlink to it, a path that walks out and back in): exit 2 naming --junit, the build unchanged and loadable."""
    link = built.parent / "LINK"
    if not link.exists():
        link.symlink_to(built, target_is_directory=True)
    path = (built.parent / target) if target.startswith("LINK") else built / target
    before = _tree(built)
    proc = _cli("verify", built, "--junit", path)
    _one_line(proc.returncode, proc.stderr, 2, "--junit", str(path))
    assert _tree(built) == before


def test_junit_naming_the_recipe_it_reads_is_refused(built, tmp_path):
    """`--recipe R.toml --junit R.toml`: the recipe is an input too."""
    recipe = tmp_path / "gate.toml"
    recipe.write_text((Path(__file__).parents[1] / "recipes" / "onnx-fp32.toml").read_text())
    before = _tree(tmp_path, built)
    proc = _cli("verify", built, "--recipe", recipe, "--junit", recipe)
    _one_line(proc.returncode, proc.stderr, 2, "--junit", str(recipe), "inside")
    assert _tree(tmp_path, built) == before


def test_junit_long_valid_name_and_a_regular_file_are_written(built, tmp_path):
    """A 250-character report name works (the tool's temporary name beside it is hashed to fit NAME_MAX); an
    existing regular file is replaced whole, with no temporary file left."""
    long_name = tmp_path / ("j" * 246 + ".xml")
    assert len(long_name.name) == 250
    old = tmp_path / "old.xml"
    old.write_text("last run's report")
    before = _tree(built)
    for path in (long_name, old):
        proc = _cli("verify", built, "--junit", path, "--json")
        assert proc.returncode == 0, proc.stderr
        assert path.read_bytes().startswith(b"<?xml") and b"<testsuite" in path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([long_name.name, "old.xml"])
    assert _tree(built) == before


def test_junit_full_disk_is_exit_2_naming_it(built, tmp_path, monkeypatch):
    """A full disk while the report is written (ENOSPC, simulated at the write: no small filesystem to fill can be
    mounted here): exit 2, one line naming --junit and the path, parity's outcome said; no temporary file left."""
    real_fdopen = outdir.os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, _data):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(outdir.os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    path = tmp_path / "report.xml"
    res = runner.invoke(app, ["verify", str(built), "--junit", str(path), "--json"])
    line = _one_line(res.exit_code, res.stderr, 2, "--junit", str(path), "No space left on device")
    assert "parity passed" in line
    assert list(tmp_path.iterdir()) == []


def test_write_file_atomic_never_replaces_what_is_not_a_regular_file(tmp_path):
    """The check repeated at write time: a FIFO, directory or symlink that appeared at the path stays as it was."""
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "r.xml")
    (tmp_path / "dir" / "r.xml").mkdir(parents=True)
    (tmp_path / "link").mkdir()
    (tmp_path / "link" / "r.xml").symlink_to(tmp_path / "mine.txt")
    (tmp_path / "mine.txt").write_text("mine")
    before = _tree(tmp_path)
    for sub in ("fifo", "dir", "link"):
        with pytest.raises(OSError, match="not replaced"):
            write_file_atomic(tmp_path / sub / "r.xml", b"<x/>")
    assert _tree(tmp_path) == before


# ------------------------------------------------------------------------------------------------ the lock file


def test_planted_lock_symlink_leaves_the_users_file_untouched(tmp_path):
    """The issue's `.NAME.lock -> user_file` (and a dangling link): exit 2 naming the lock path; the user's file
    keeps its bytes, the link target is not created, no build happens."""
    user = tmp_path / "thesis.tex"
    user.write_text("years of work")
    (tmp_path / ".out.lock").symlink_to(user)
    (tmp_path / ".other.lock").symlink_to(tmp_path / "created-by-lock")
    before = _tree(tmp_path)
    for name in ("out", "other"):
        proc = _cli("export", "-o", tmp_path / name)
        _one_line(proc.returncode, proc.stderr, 2, f"-o {tmp_path / name}", str(tmp_path / f".{name}.lock"),
                  "symbolic link")
    assert _tree(tmp_path) == before and user.read_text() == "years of work"
    assert not (tmp_path / "created-by-lock").exists()


@pytest.mark.parametrize("kind", ["fifo", "user-file", "directory", "char-device"])
def test_lock_name_taken_by_something_not_ours_is_refused(tmp_path, kind):
    """A FIFO (no hang), a user's file that is not a lock (never truncated), a directory or a device node at the
    lock's name: refused naming it, left as it was."""
    lock = tmp_path / ".out.lock"
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "user-file":
        lock.write_text("my notes, not a PID\n")
    elif kind == "directory":
        lock.mkdir()
    else:
        _char_device(lock)
    before = _tree(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(UserError, match=re.escape(str(lock))):
        with Staging(tmp_path / "out", force=False):
            pytest.fail("the build started")
    assert time.monotonic() - t0 < LIMIT_S
    assert _tree(tmp_path) == before


def test_stale_lock_is_replaced_not_written_and_a_hard_link_survives(tmp_path):
    """A killed build's lock (its PID) nobody holds is removed and created anew (exclusively: a new file), so a
    hard link planted as the lock (to a user's file that happens to hold a number) loses only that link: the
    user's file keeps its bytes and its other name."""
    user = tmp_path / "counter.txt"
    user.write_text("12345\n")
    lock = tmp_path / ".out.lock"
    os.link(user, lock)
    staging = Staging(tmp_path / "out", force=False)
    with staging as tmp:
        assert lock.exists() and os.stat(lock).st_ino != os.stat(user).st_ino
        assert lock.read_text() == f"{os.getpid()}\n"
        (tmp / "x.onnx").write_text("built")
        staging.commit()
    assert user.read_text() == "12345\n" and os.stat(user).st_nlink == 1
    assert not lock.exists() and (tmp_path / "out" / "x.onnx").read_text() == "built"


def test_lock_created_exclusively_and_release_removes_only_its_own(tmp_path):
    """The lock file is new (O_EXCL) and is removed on release only while it is still the file this lock made: a
    file someone put at its name meanwhile stays."""
    lock = OutputLock(tmp_path / "out")
    lock.acquire()
    assert lock.path.read_text() == f"{os.getpid()}\n"
    os.unlink(lock.path)
    lock.path.write_text("someone else's\n")
    lock.release()
    assert lock.path.read_text() == "someone else's\n"


# --------------------------------------------------------------------------------------------------- names


def test_sibling_stem_fits_name_max_and_is_deterministic():
    short = "out"
    assert sibling_stem(short) == short
    for name in ("o" * 225, "o" * 226, "o" * 250, "é" * 127, "x" * 255):
        stem = sibling_stem(name)
        longest = f".{stem}.partial-{'9' * 20}"
        assert len(os.fsencode(longest)) <= NAME_MAX, (len(name), len(os.fsencode(longest)))
        assert stem == sibling_stem(name) and stem != sibling_stem(name[:-1] + "z")
        stem.encode()  # (a multi-byte character is not cut in half)


def test_250_character_output_builds_and_leaves_nothing_beside_it(tmp_path):
    """A valid 250-character -o: the lock, staging and replaced-build names beside it are hashed to fit NAME_MAX;
    a killed build's leftovers under the hashed name are found and removed; --force replaces it."""
    out = tmp_path / ("b" * 250)
    stem = sibling_stem(out.name)
    (tmp_path / f".{stem}.partial-999999999").mkdir()
    stale = []
    for force in (False, True):
        staging = Staging(out, force=force)
        with staging as tmp:
            assert len(os.fsencode(tmp.name)) <= NAME_MAX and staging.lock.path.exists()
            (tmp / "x.onnx").write_text("built")
            (tmp / MANIFEST).write_text(json.dumps({"tool": "mobilevlm_export", "artifacts": [{"path": "x.onnx"}]}))
            staging.commit()
        assert (out / "x.onnx").read_text() == "built"
        stale += staging.stale
    assert stale == [f".{stem}.partial-999999999"] and sorted(os.listdir(tmp_path)) == [out.name]


def test_250_character_output_through_the_cli(tiny_ckpt, samples, tmp_path):
    """The issue's case end to end: `build -o <250 characters>` is exit 0 (it was refused, blaming the parent)."""
    out = tmp_path / ("c" * 250)
    res = runner.invoke(app, ["build", str(tiny_ckpt), "--target", "onnx", "-o", str(out), "--samples", str(samples),
                              "--no-bench", "--no-simplify"])
    assert res.exit_code == 0, res.output
    assert (out / MANIFEST).is_file() and sorted(os.listdir(tmp_path)) == [out.name]


@pytest.mark.parametrize("case", ["name-256", "component-256", "symlink-loop", "under-a-file"])
def test_bad_output_paths_are_exit_2_naming_them(tmp_path, case):
    """-o of 256 characters (last component or one on the way), under a symlink loop, under a regular file: exit 2,
    one line naming -o and the path (not exit 3), nothing created."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "file").write_text("x")
    out = {"name-256": tmp_path / ("n" * 256), "component-256": tmp_path / ("n" * 256) / "out",
           "symlink-loop": tmp_path / "loop" / "out", "under-a-file": tmp_path / "file" / "out"}[case]
    before = _tree(tmp_path)
    proc = _cli("export", "-o", out)
    _one_line(proc.returncode, proc.stderr, 2, f"-o {out}")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("case", ["name-256", "symlink-loop"])
def test_verify_path_too_long_or_looping_is_exit_2(tmp_path, case):
    """`verify PATH` with a 256-character name or under a symlink loop: exit 2 naming PATH (was exit 3)."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    path = tmp_path / ("v" * 256) if case == "name-256" else tmp_path / "loop" / "dir"
    proc = _cli("verify", path, "--json")
    _one_line(proc.returncode, proc.stderr, 2, str(path))
    assert json.loads(proc.stdout)["exit_code"] == 2


def test_full_disk_during_a_build_is_exit_2_naming_the_output(tiny_ckpt, samples, tmp_path, monkeypatch):
    """ENOSPC while the build writes (simulated at the manifest's write): exit 2, one line naming -o (not exit 3
    with no path); no staging directory or lock left."""
    from mobilevlm_export import manifest

    def full(path, data):
        raise OSError(28, "No space left on device")

    out = tmp_path / "out"
    monkeypatch.setattr(manifest, "write_file_atomic", full)
    res = runner.invoke(app, ["build", str(tiny_ckpt), "--target", "onnx", "-o", str(out), "--samples", str(samples),
                              "--no-bench", "--no-simplify"])
    _one_line(res.exit_code, res.stderr, 2, f"-o {out}", "No space left on device")
    assert os.listdir(tmp_path) == []


def _on_a_full_disk(tmp_path: Path, size: str, fill: bool, *args) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The CLI with ``tmp_path/mnt`` a tmpfs of ``size`` (filled first with ``fill``), mounted in a private user and
    mount namespace (``unshare -rm``: gone with the process, never seen outside); what was left in it, listed."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    mnt, listing = tmp_path / "mnt", tmp_path / "left.txt"
    mnt.mkdir()
    # $1 size, $2 the mount point, $3 fill it first (1/0), $4 where to list what is left; then the command
    script = ('mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99; '
              'if [ "$3" = 1 ]; then head -c 4M /dev/zero > "$2/fill" 2>/dev/null; fi; '
              'mnt=$2 left=$4; shift 4; "$@"; rc=$?; ls -A "$mnt" > "$left"; exit $rc')
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", size, str(mnt), "1" if fill else "0",
                           str(listing), *CLI, *map(str, args)], capture_output=True, text=True, timeout=LIMIT_S)
    if proc.returncode == 99 or proc.stderr.startswith("unshare:"):  # (user namespaces or mounts not allowed)
        pytest.skip(f"no tmpfs can be mounted in a user namespace here: {proc.stderr.strip()}")
    left = [n for n in listing.read_text().split() if n != "fill"]
    return proc, left


def test_real_full_disk_during_a_build(tmp_path):
    """A real ENOSPC (a 1 MiB tmpfs): `export -o` is exit 2, one line naming -o and the cause, not exit 3; the
    staging directory and the lock are gone."""
    out = tmp_path / "mnt" / "out"
    proc, left = _on_a_full_disk(tmp_path, "1m", False, "export", "-o", out)
    _one_line(proc.returncode, proc.stderr, 2, f"-o {out}", "No space left on device")
    assert left == []


def test_real_full_disk_for_the_junit_report(built, tmp_path):
    """A real ENOSPC writing the report (a full 64 KiB tmpfs): exit 2, one line naming --junit and the path, the
    build unchanged, no temporary file left."""
    path = tmp_path / "mnt" / "r.xml"
    before = _tree(built)
    proc, left = _on_a_full_disk(tmp_path, "64k", True, "verify", built, "--junit", path, "--json")
    _one_line(proc.returncode, proc.stderr, 2, f"--junit {path}", "No space left on device", "parity passed")
    assert left == [] and _tree(built) == before


# -------------------------------------------------------------------------------------------------------- stdout


@pytest.mark.parametrize("args", [["inspect", "--json"], ["inspect"], ["--help"], ["verify", "BUILT", "--json"],
                                  ["verify", "MISSING", "--json"], ["inspect", "--bogus", "--json"]])
def test_stdout_full_is_one_line(built, args):
    """`> /dev/full`: the output (or the JSON error object) cannot be written: exit 2 with one line naming stdout
    (or the command's own error, its JSON not retried), never a traceback; the build unchanged."""
    args = [str(built) if a == "BUILT" else str(built.parent / "missing") if a == "MISSING" else a for a in args]
    before = _tree(built)
    with open("/dev/full", "wb") as full:
        proc = _cli(*args, stdout=full)
    expect = "no such artifact directory" if "missing" in " ".join(args) else (
        "No such option" if "--bogus" in args else "cannot write to stdout (/dev/full): No space left on device")
    _one_line(proc.returncode, proc.stderr, 2, expect)
    assert _tree(built) == before


@pytest.mark.parametrize("args", [["inspect", "--json"], ["verify", "BUILT", "--json"], ["inspect", "--bogus",
                                                                                         "--json"]])
def test_stdout_closed_is_one_line(built, args):
    """`>&-` (descriptor 1 closed at start): one line, exit 2, as `ls >&-` does; the report a command opens never
    takes descriptor 1."""
    args = [str(built) if a == "BUILT" else a for a in args]
    proc = _cli(*args, stdout=None, preexec_fn=lambda: os.close(1))
    expect = "No such option" if "--bogus" in args else "cannot write to stdout: it is closed"
    _one_line(proc.returncode, proc.stderr, 2, expect)


def test_stdout_closed_does_not_lend_its_descriptor_to_the_report(built, tmp_path):
    """With descriptor 1 closed at start, the report (opened later) does not take it: it holds only its XML, and
    the command still says, in one line, that stdout is closed."""
    report = tmp_path / "r.xml"
    proc = _cli("verify", built, "--junit", report, "--json", stdout=None, preexec_fn=lambda: os.close(1))
    _one_line(proc.returncode, proc.stderr, 2, "cannot write to stdout: it is closed")
    from xml.etree import ElementTree as ET

    suite = ET.fromstring(report.read_bytes())
    assert suite.tag == "testsuite" and int(suite.get("tests")) > 0 and suite.get("failures") == "0"


def test_lock_full_disk_is_exit_2_naming_the_lock(tmp_path, monkeypatch):
    """ENOSPC writing the lock's PID: refused naming the lock, which is removed (nothing left beside -o)."""
    real_write = outdir.os.write

    def full(fd, data):
        if data == f"{os.getpid()}\n".encode():
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(outdir.os, "write", full)
    with pytest.raises(UserError, match=r"lock file .*\.out\.lock cannot be written \(No space left on device\)"):
        with Staging(tmp_path / "out", force=False):
            pytest.fail("the build started")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args,code", [(["verify", "BUILT", "--json"], 141), (["--help"], 141),
                                       (["verify", "MISSING", "--json"], 2), (["inspect", "--bogus", "--json"], 2)])
def test_stdout_reader_gone(built, args, code):
    """A closed pipe: the output ends quietly with 141 (nothing on stderr); an error ends with its own one line and
    code, its JSON object not written to the gone reader (no traceback, not click's exit 1)."""
    args = [str(built) if a == "BUILT" else str(built.parent / "missing") if a == "MISSING" else a for a in args]
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # (before the command writes: it imports for about a second first)
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=LIMIT_S) == code, stderr
    if code == 141:
        assert stderr == "", stderr
    else:
        _one_line(code, stderr, code)
