"""Library noise kept out of what a user reads: the CLI's and ``python -m mobilevlm_export.demo``'s one way to
quiet the libraries (a bad input gets our one line, not transformers' notes about it)."""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
from contextlib import contextmanager

# loggers whose warnings are about the libraries, not the user's input: torchao's optional CUDA kernels failing to
# load on a CPU machine, torch's pytree deprecation notes
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")
# torch's own log components (it sets their levels itself, from TORCH_LOGS): the ONNX exporter's notes on optional
# torchvision ops, torch.export's notes
QUIET_TORCH_LOGS = ("onnx", "export")
# Python warnings of these categories come from the libraries (deprecations inside torch's exporter, ExecuTorch's
# notes on buffers); the tool says what the user must know itself
QUIET_WARNINGS = (DeprecationWarning, FutureWarning, UserWarning)


def quiet_libraries(shown: bool | None = None) -> None:
    """Every entry point's one way to quiet the libraries (the CLI, ``python -m mobilevlm_export.demo``, the
    benchmark suite and its workers, the demo's training and evaluation): nothing, where the user asked for the
    libraries' notes (``shown``: the CLI's ``--debug``; None: ``DEBUG_ENV`` set in the environment). Otherwise
    transformers logs errors only, unless TRANSFORMERS_VERBOSITY says otherwise, and so do the
    ``QUIET_LOGGERS``, unless a level was set on them, and torch's ``QUIET_TORCH_LOGS`` components, unless
    TORCH_LOGS is set; ``QUIET_WARNINGS`` are ignored unless ``-W`` or ``PYTHONWARNINGS`` says otherwise. Call it
    before torch is imported where possible (torch reads TORCH_LOGS when it loads)."""
    if shown if shown is not None else os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return
    if "TRANSFORMERS_VERBOSITY" not in os.environ:  # a user's own setting is transformers' to read
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        if "transformers" in sys.modules:  # already configured in this process: it read the variable then
            logging.getLogger("transformers").setLevel(logging.ERROR)
    for name in QUIET_LOGGERS:  # unless a user set a level on them
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
    if "TORCH_LOGS" not in os.environ:  # a user's own setting is torch's to read
        if "torch" in sys.modules:  # already loaded in this process (before the variable is set: torch's set_logs
            sys.modules["torch"]._logging.set_logs(**dict.fromkeys(QUIET_TORCH_LOGS, logging.ERROR))  # notes a set
        os.environ["TORCH_LOGS"] = ",".join(f"-{name}" for name in QUIET_TORCH_LOGS)  # TORCH_LOGS and ignores it)
    if not sys.warnoptions:  # a user's -W / PYTHONWARNINGS decides otherwise
        import warnings

        for category in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", category=category)


# lines the runtime's native code writes to stderr about the host's CPU description (cpuinfo cannot read /sys in
# some containers; ExecuTorch's threadpool logs its core-count probe, e.g. "[cpuinfo_utils.cpp:109] Failed to open
# midr file ..."); they say nothing about the user's input or results, not even with --debug
NATIVE_NOISE = ("Error in cpuinfo:", "Warning in cpuinfo:", "[cpuinfo_utils.cpp:")
# set (to anything but "" or "0") to pass the native runtimes' own log lines on to stderr; the CLI's --debug
DEBUG_ENV = "MVLM_EXPORT_DEBUG"


_NATIVE_LOGS = {"shown": None}  # the CLI's --debug for the command running (None: the environment decides)


def show_native_logs(shown: bool | None) -> None:
    """Set whether this command passes the native runtimes' log lines on (the CLI's ``--debug``), for this command
    only (None: as ``DEBUG_ENV`` says); the environment is not touched, so nothing carries over to the next."""
    _NATIVE_LOGS["shown"] = shown


def native_logs_shown() -> bool:
    """Whether the native runtimes' log lines reach stderr (``--debug``, or ``DEBUG_ENV`` set)."""
    if _NATIVE_LOGS["shown"] is not None:
        return _NATIVE_LOGS["shown"]
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


@contextmanager
def native_stderr_filtered(drop: tuple[str, ...] = NATIVE_NOISE):
    """Capture what native code (ExecuTorch, XNNPACK, ONNX Runtime) writes to stderr meanwhile: to file descriptor
    2, and to Python's ``sys.stderr`` (ExecuTorch's Python bindings print their runtime's log lines there, which is
    not descriptor 2 where a caller replaced it: a notebook, a test's runner). Its log lines ("[method.cpp:62]
    Missing operator ...", "[E:onnxruntime:...]", "[cpuinfo_utils.cpp:87] ...") repeat in their own words what the
    one error line says, or say nothing about the user's input: they are dropped, unless ``native_logs_shown()``,
    and then every line but ``drop``'s is passed on."""
    sys.stderr.flush()
    saved, saved_stream = os.dup(2), sys.stderr
    python_side = io.StringIO()
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        sys.stderr = python_side
        try:
            yield
        finally:
            sys.stderr = saved_stream
            os.dup2(saved, 2)
            os.close(saved)
            if native_logs_shown():
                captured.seek(0)
                text = captured.read().decode(errors="replace") + python_side.getvalue()
                for line in text.splitlines(keepends=True):
                    if not line.startswith(drop):
                        sys.stderr.write(line)
                sys.stderr.flush()
