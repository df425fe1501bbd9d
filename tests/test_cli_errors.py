"""The CLI's error contract, as a table: bad flags and values are one stderr line + exit 2 (one JSON object on stdout
with --json), internal errors are one line + exit 3 (the traceback with --debug), exit 1 stays a failed check."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mobilevlm_export.cli import CORES, app
from mobilevlm_export.errors import UserError

runner = CliRunner()


def _one_line(res, code: int, *needles: str) -> str:
    assert res.exit_code == code, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.output and "Usage:" not in res.output, res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# (arguments after the command's positional ones, the flag the message must name)
FLAG_CASES = [
    (["--threads", "0"], "--threads"),
    (["--threads", "-1"], "--threads"),
    (["--threads", str(CORES + 1)], "--threads"),
    (["--threads", "100000"], "--threads"),
    (["--threads", "two"], "--threads"),
    (["--bogus"], "--bogus"),
]
SAMPLING_CASES = [
    (["--top-p", "nan"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-p", "-0.1"], "--top-p"),
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--top-k", "-3"], "--top-k"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
]


@pytest.mark.parametrize("command", ["run", "verify", "bench"])
@pytest.mark.parametrize("args,flag", FLAG_CASES)
def test_bad_flags_of_artifact_commands(command, args, flag, tmp_path, image_file):
    extra = ["--image", str(image_file), "--prompt", "hi"] if command == "run" else []
    res = runner.invoke(app, [command, str(tmp_path), *extra, *args])
    _one_line(res, 2, flag)


@pytest.mark.parametrize("args,flag", FLAG_CASES[:4])
def test_bad_threads_of_build(args, flag, tiny_ckpt, tmp_path):
    res = runner.invoke(app, ["build", str(tiny_ckpt), "--target", "onnx", "-o", str(tmp_path / "o"), *args])
    _one_line(res, 2, flag)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,flag", SAMPLING_CASES)
def test_bad_sampling_values(args, flag, tiny_ckpt, image_file):
    res = runner.invoke(app, ["generate", str(tiny_ckpt), "--image", str(image_file), "--prompt", "hi", *args])
    _one_line(res, 2, flag)


def test_edge_sampling_values_work(tiny_ckpt, image_file):
    """top-p 0 keeps the most likely token (as greedy); a subnormal temperature is greedy too, never NaN."""
    greedy = runner.invoke(app, ["generate", str(tiny_ckpt), "--image", str(image_file), "--prompt", "hi",
                                 "--max-new-tokens", "3", "--json"])
    assert greedy.exit_code == 0, greedy.output
    for args in (["--temperature", "1", "--top-p", "0"], ["--temperature", "5e-324"]):
        res = runner.invoke(app, ["generate", str(tiny_ckpt), "--image", str(image_file), "--prompt", "hi",
                                  "--max-new-tokens", "3", "--json", *args])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["output_ids"] == json.loads(greedy.stdout)["output_ids"]


def test_json_errors_are_one_object(tmp_path):
    for args in (["verify", str(tmp_path / "none"), "--json"], ["bench", str(tmp_path), "--threads", "0", "--json"],
                 ["run", str(tmp_path), "--json"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        obj = json.loads(res.stdout)
        assert set(obj) == {"error", "exit_code"} and obj["exit_code"] == 2 and obj["error"], obj
        assert res.stderr.strip() == f"error: {obj['error']}"


def test_internal_error_is_exit_3_and_debug_shows_it(tiny_ckpt, monkeypatch):
    import mobilevlm_export.summary

    def broken(_ckpt):
        raise KeyError("a bug")

    monkeypatch.setattr(mobilevlm_export.summary, "describe", broken)
    line = _one_line(runner.invoke(app, ["inspect", str(tiny_ckpt)]), 3, "internal error", "KeyError", "--debug")
    assert "MVLM_EXPORT_DEBUG" in line
    res = runner.invoke(app, ["inspect", str(tiny_ckpt), "--json"])
    assert res.exit_code == 3 and json.loads(res.stdout)["exit_code"] == 3
    res = runner.invoke(app, ["--debug", "inspect", str(tiny_ckpt)])
    assert isinstance(res.exception, KeyError)  # raised, so Python prints the traceback


def test_error_during_progress_leaves_one_line(tiny_ckpt, tmp_path, monkeypatch):
    """A failure while the progress bars are up: the bars are not left above the error line."""
    import mobilevlm_export.golden_writer

    def fail(*_a, **_k):
        raise UserError("samples: boom")

    monkeypatch.setattr(mobilevlm_export.golden_writer, "make_golden", fail)
    res = runner.invoke(app, ["build", str(tiny_ckpt), "--target", "onnx", "-o", str(tmp_path / "o")])
    _one_line(res, 2, "samples: boom")
    assert res.stderr.startswith("error: "), repr(res.stderr)  # not even a blank line before it
    assert not list(tmp_path.iterdir())


def test_prompt_that_is_not_utf8(tiny_ckpt, image_file):
    """Bytes that are not UTF-8 on the command line (they reach Python as surrogates)."""
    res = subprocess.run([sys.executable, "-m", "mobilevlm_export.cli", "generate", str(tiny_ckpt), "--image",
                          str(image_file), "--prompt", os.fsdecode(b"caf\xe9 \xff?")], capture_output=True,
                         text=True)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--prompt" in lines[0] and "UTF-8" in lines[0], res.stderr
    assert "character 3," in lines[0], res.stderr  # (a character index: the 4th character, \xe9's surrogate)


def test_question_that_is_not_utf8_names_its_file_and_key(tiny_ckpt, samples, tmp_path):
    """A questions.json entry holding a lone surrogate (a JSON escape): the error names the file and the entry's
    key, not --prompt."""
    bad = tmp_path / "samples"
    bad.mkdir()
    items = json.loads((samples / "questions.json").read_text())
    (bad / items[0]["image"]).write_bytes((samples / items[0]["image"]).read_bytes())
    (bad / "questions.json").write_text(json.dumps([{"image": items[0]["image"], "question": "ok \ud800?"}]))
    res = runner.invoke(app, ["build", str(tiny_ckpt), "--target", "onnx", "-o", str(tmp_path / "o"), "--samples",
                              str(bad), "--no-bench"])
    line = _one_line(res, 2, f"{bad / 'questions.json'}: key '[0].question'", "UTF-8", "character 3,")
    assert "--prompt" not in line
    assert not (tmp_path / "o").exists()


def test_click_without_no_args_is_help_error(monkeypatch):
    """Before click 8.2 there is no NoArgsIsHelpError: a usage error is still one line, exit 2 (not an
    AttributeError from the handler naming it)."""
    from mobilevlm_export import cli

    res = runner.invoke(app, [])  # (this click: the help, exit 0)
    assert res.exit_code == 0 and "Usage" in res.output and "inspect" in res.output, res.output
    monkeypatch.delattr(cli.clickx, "NoArgsIsHelpError")
    _one_line(runner.invoke(app, ["inspect", "--bogus"]), 2, "--bogus")


@pytest.mark.parametrize("as_json", [True, False])
def test_stdout_reader_gone_exits_quietly(tiny_ckpt, as_json):
    """`mvlm-export inspect | head`: the reader going away ends the command with 141 (128 + SIGPIPE, as a shell
    reports `yes | head`), nothing on stderr: neither an internal error (3) nor rich's exit 1 (a failed check's
    code), nor Python's "Exception ignored"."""
    proc = subprocess.Popen([sys.executable, "-m", "mobilevlm_export.cli", "inspect", str(tiny_ckpt),
                             *(["--json"] if as_json else [])], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes (it loads the checkpoint first)
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == "", stderr


def test_threads_bound_and_default_from_one_core_count(monkeypatch):
    """--threads' bound and ONNX Runtime's default come from cores.usable_cores (the affinity mask where there is
    one); the help says which runtime the default of at most 4 is for."""
    from mobilevlm_export import cli, cores
    from mobilevlm_export.backends.onnx import cpu_session
    from mobilevlm_export.cores import ONNX_MAX_DEFAULT_THREADS, onnx_default_threads, usable_cores

    assert CORES == usable_cores() and cli.ThreadsOpt.__metadata__[0].max == CORES
    help_text = cli.ThreadsOpt.__metadata__[0].help
    assert f"1..{CORES}" in help_text and f"ONNX Runtime min({CORES}, {ONNX_MAX_DEFAULT_THREADS})" in help_text
    assert "ExecuTorch" in help_text
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1})
        assert usable_cores() == 2 and onnx_default_threads() == 2
        monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(64)))
        assert usable_cores() == 64 and onnx_default_threads() == ONNX_MAX_DEFAULT_THREADS
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    session = cpu_session(model.SerializeToString())
    assert session.get_session_options().intra_op_num_threads == onnx_default_threads()
