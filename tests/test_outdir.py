"""``-o`` safety: a build never deletes what it did not write, refuses dangerous outputs before any work, holds a
lock on its output so a second build to it fails fast, and cleans up what a killed build left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from mobilevlm_export.cli import app
from mobilevlm_export.demo.shapes import QUESTIONS, render
from mobilevlm_export.errors import UserError
from mobilevlm_export.manifest import MANIFEST
from mobilevlm_export.outdir import OutputLock, Staging

runner = CliRunner()


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("samples")
    render(2, 0).image.save(d / "0.png")
    (d / "questions.json").write_text(json.dumps([{"image": "0.png", "question": QUESTIONS["color"]}]))
    return d


def _build(ckpt, out, samples, *extra):
    return runner.invoke(app, ["build", str(ckpt), "--target", "onnx", "-o", str(out), "--samples", str(samples),
                               "--no-bench", "--no-simplify", *extra])


def _snapshot(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(res, *needles):
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: -o") and "Traceback" not in res.output, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("force", [False, True])
def test_dot_output_in_a_directory_of_user_files(tiny_ckpt, samples, tmp_path, monkeypatch, force):
    """`-o .` (and its parent) with or without --force: refused before any work, the user's files untouched."""
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "thesis.tex").write_text("years of work")
    (work / "notes" / "a.txt").write_text("a")
    monkeypatch.chdir(work)
    before = _snapshot(tmp_path)
    for out in (".", "..", str(work)):
        _refused(_build(tiny_ckpt, out, samples, *(["--force"] if force else [])), "current directory")
    assert _snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["work"]


def test_dangerous_and_unwritable_outputs(tiny_ckpt, samples, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    _refused(_build(tiny_ckpt, tmp_path / "home", samples, "--force"), "home directory")
    _refused(_build(tiny_ckpt, "/", samples, "--force"), "filesystem root")
    _refused(_build(tiny_ckpt, tiny_ckpt, samples, "--force"), "input directory")
    _refused(_build(tiny_ckpt, tiny_ckpt.parent, samples, "--force"), "input directory")
    _refused(_build(tiny_ckpt, samples, samples, "--force"), "input directory")
    _refused(_build(tiny_ckpt, tmp_path / "missing" / "out", samples), "parent directory")
    (tmp_path / "file").write_text("x")
    _refused(_build(tiny_ckpt, tmp_path / "file", samples, "--force"), "not a directory")
    _refused(_build(tiny_ckpt, "/proc/mvlm-export-out", samples), "cannot write")  # (read-only even for root)
    assert (tmp_path / "file").read_text() == "x"


def test_force_replaces_only_a_build_of_ours_and_stale_partials_go(tiny_ckpt, samples, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("user data")
    _refused(_build(tiny_ckpt, out, samples), "not empty")
    _refused(_build(tiny_ckpt, out, samples, "--force"), "not a mobilevlm_export build")
    (out / MANIFEST).write_text(json.dumps({"tool": "something-else", "artifacts": []}))
    _refused(_build(tiny_ckpt, out, samples, "--force"), "not a mobilevlm_export build")
    assert (out / "data.csv").read_text() == "user data"

    built = tmp_path / "built"
    stale = tmp_path / ".built.partial-999999999"  # what a killed build left: removed by the next, and recorded
    (stale / "graphs").mkdir(parents=True)
    (stale / "graphs" / "decoder.onnx").write_text("half written")
    res = _build(tiny_ckpt, built, samples, "--json")
    assert res.exit_code == 0, res.output
    assert not stale.exists() and json.loads(res.stdout)["build"]["stale_partials_removed"] == [stale.name]
    (built / "graphs" / "my_notes.txt").write_text("mine")  # a file the build did not write
    _refused(_build(tiny_ckpt, built, samples, "--force"), "graphs/my_notes.txt")
    assert (built / "graphs" / "my_notes.txt").read_text() == "mine"
    (built / "graphs" / "my_notes.txt").unlink()
    first = json.loads((built / MANIFEST).read_text())["created"]
    res = _build(tiny_ckpt, built, samples, "--force")  # our own build, nothing else in it: replaced
    assert res.exit_code == 0, res.output
    assert json.loads((built / MANIFEST).read_text())["created"] >= first
    assert not list(tmp_path.glob(".built.*"))  # no lock, staging or old copy left


def test_commit_does_not_replace_a_directory_that_appeared(tmp_path):
    """The output checks are repeated at commit time: files someone wrote to ``-o`` during the build survive."""
    out = tmp_path / "out"
    staging = Staging(out, force=False)
    with pytest.raises(UserError, match="during the build"):
        with staging as tmp:
            (tmp / "x.onnx").write_text("built")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
            staging.commit()
    assert _snapshot(out) == {"theirs.txt": b"theirs"}
    assert not list(tmp_path.glob(".out.*"))


def test_sigterm_swallowed_by_a_weakref_callback_still_stops_the_commit(tmp_path, monkeypatch):
    """Python ignores an exception raised in a weakref callback (torch's run often during an export): a SIGTERM
    whose ``SystemExit`` landed there is still honoured, by the commit (the build is discarded) and by the CLI's
    exit, which does not print the ignored exception."""
    import signal
    import weakref

    from mobilevlm_export import cli, outdir  # (cli: its hook for exceptions Python ignores)

    monkeypatch.setattr(outdir, "_TERMINATED", [])
    monkeypatch.setattr(sys, "unraisablehook", cli._unraisable)
    printed = []
    monkeypatch.setattr(sys, "__unraisablehook__", printed.append)

    class Node:
        pass

    out = tmp_path / "out"
    staging = Staging(out, force=False)
    with pytest.raises(SystemExit) as stopped:
        with staging as tmp:
            (tmp / "x.onnx").write_text("built")
            node = Node()
            ref = weakref.ref(node, lambda _r: outdir.on_terminate(signal.SIGTERM, None))
            del node  # the callback runs here; its SystemExit is ignored and the build goes on
            assert ref() is None and outdir._TERMINATED == [signal.SIGTERM]
            staging.commit()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert printed == []
    # the CLI's process: a command that runs to its end after the swallowed signal exits as a SIGTERM, silently
    script = ("import signal, sys, weakref\nfrom mobilevlm_export import cli, outdir\nclass Node: pass\n"
              "def app():\n    node = Node()\n"
              "    ref = weakref.ref(node, lambda _r: outdir.on_terminate(signal.SIGTERM, None))\n"
              "    del node\n    print('ran to its end')\n    sys.exit(0)\n"
              "cli.app = app\ncli.main()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (128 + signal.SIGTERM, "ran to its end\n", "")


def test_lock_is_exclusive_and_released(tmp_path):
    a, b = OutputLock(tmp_path / "out"), OutputLock(tmp_path / "out")
    a.acquire()
    with pytest.raises(UserError, match="another build is writing it"):
        b.acquire()
    a.release()
    assert not a.path.exists()
    b.acquire()
    b.release()


def test_two_concurrent_builds_to_one_output(tiny_ckpt, samples, tmp_path):
    """The second build fails fast with exit 2 while the first holds the lock; the first's output is whole."""
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "mobilevlm_export.cli", "build", str(tiny_ckpt), "--target",
                              "onnx", "-o", str(out), "--samples", str(samples), "--no-bench", "--no-simplify"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / ".out.lock").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, "the first build ended before the second started"
    t0 = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "mobilevlm_export.cli", "build", str(tiny_ckpt), "--target",
                             "onnx", "-o", str(out), "--samples", str(samples), "--no-bench", "--force"],
                            capture_output=True, text=True)
    assert second.returncode == 2 and "another build is writing it" in second.stderr, second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and time.monotonic() - t0 < 60
    assert first.wait(timeout=300) == 0, first.stderr.read()
    noise = [line for line in first.stderr.read().splitlines()  # the libraries' notes stay out of a user's output
             if "Warning" in line or line[:1] in ("W", "I") and line[1:5].isdigit()]
    assert not noise, noise
    manifest = json.loads((out / MANIFEST).read_text())
    assert {a["path"] for a in manifest["artifacts"]} == {
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != MANIFEST}
    assert not list(tmp_path.glob(".out.*"))


def test_symlink_output_builds_into_its_target(tmp_path):
    """`-o LINK` (a link to a directory): resolved once, so the lock, the staging directory and the commit are the
    target's; the link stays a link to the new build, and --force replaces a build of ours through it."""
    target = tmp_path / "real" / "out"
    target.parent.mkdir()
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    for force, content in ((False, "first"), (True, "second")):
        staging = Staging(link, force=force)
        with staging as tmp:
            assert tmp.parent == target.parent and (target.parent / f".{target.name}.lock").exists()
            (tmp / "x.onnx").write_text(content)
            (tmp / MANIFEST).write_text(json.dumps({"tool": "mobilevlm_export", "artifacts": [{"path": "x.onnx"}]}))
            staging.commit()
        assert link.is_symlink() and (target / "x.onnx").read_text() == content
    assert sorted(os.listdir(target.parent)) == ["out"] and sorted(os.listdir(tmp_path)) == ["link", "real"]


def test_stale_leftovers_removed_escaped_and_recorded_when_removed(tmp_path):
    """Under the lock, a killed build's staging (.NAME.partial-PID) and replaced copy (.NAME.old-PID, killed between
    commit's two renames) go; the name is matched literally (-o 'out[1]' is not 'out1'), other names' directories
    stay, and only what was actually removed is recorded."""
    out = tmp_path / "out[1]"
    for name in (".out[1].partial-999999999", ".out[1].old-999999998", ".out1.partial-7", ".out[1].partial-x",
                 ".out[1].partial-1.partial-3"):
        (tmp_path / name / "graphs").mkdir(parents=True)
    (tmp_path / ".out[1].partial-999999997").write_text("a file: rmtree refuses it")
    staging = Staging(out, force=False)
    with staging as tmp:
        (tmp / "x.onnx").write_text("built")
        staging.commit()
    assert staging.stale == [".out[1].old-999999998", ".out[1].partial-999999999"]
    assert sorted(os.listdir(tmp_path)) == [".out1.partial-7", ".out[1].partial-1.partial-3",
                                            ".out[1].partial-999999997", ".out[1].partial-x", "out[1]"]


def test_write_file_atomic_mode_and_cleanup(tmp_path, monkeypatch):
    """The file gets 0o666 less the umask (not the temporary file's 0o600); a failed write leaves nothing."""
    from mobilevlm_export import files

    old = os.umask(0o027)
    try:
        files.write_file_atomic(tmp_path / "report.xml", b"<x/>")
    finally:
        os.umask(old)
    assert (tmp_path / "report.xml").read_bytes() == b"<x/>"
    assert (tmp_path / "report.xml").stat().st_mode & 0o777 == 0o640

    def fail(*_a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="No space"):
        files.write_file_atomic(tmp_path / "other.xml", b"<y/>")
    assert sorted(os.listdir(tmp_path)) == ["report.xml"]
