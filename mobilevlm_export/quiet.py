"""Library noise kept out of what a user reads: the CLI's and ``python -m mobilevlm_export.demo``'s one way to
quiet the libraries (a bad input gets our one line, not transformers' notes about it)."""

from __future__ import annotations

import logging
import os
import sys

# loggers whose warnings are about the libraries, not the user's input: torchao's optional CUDA kernels failing to
# load on a CPU machine, torch's pytree deprecation notes
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")
# torch's own log components (it sets their levels itself, from TORCH_LOGS): the ONNX exporter's notes on optional
# torchvision ops, torch.export's notes
QUIET_TORCH_LOGS = ("onnx", "export")
# Python warnings of these categories come from the libraries (deprecations inside torch's exporter, ExecuTorch's
# notes on buffers); the tool says what the user must know itself
QUIET_WARNINGS = (DeprecationWarning, FutureWarning, UserWarning)


def quiet_libraries() -> None:
    """transformers logs errors only, unless TRANSFORMERS_VERBOSITY says otherwise, and so do the
    ``QUIET_LOGGERS``, unless a level was set on them, and torch's ``QUIET_TORCH_LOGS`` components, unless
    TORCH_LOGS is set; ``QUIET_WARNINGS`` are ignored unless ``-W`` or ``PYTHONWARNINGS`` says otherwise. Call it
    before torch is imported where possible (torch reads TORCH_LOGS when it loads)."""
    if "TRANSFORMERS_VERBOSITY" not in os.environ:  # a user's own setting is transformers' to read
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        if "transformers" in sys.modules:  # already configured in this process: it read the variable then
            logging.getLogger("transformers").setLevel(logging.ERROR)
    for name in QUIET_LOGGERS:  # unless a user set a level on them
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.ERROR)
    if "TORCH_LOGS" not in os.environ:  # a user's own setting is torch's to read
        os.environ["TORCH_LOGS"] = ",".join(f"-{name}" for name in QUIET_TORCH_LOGS)  # read when torch loads
        if "torch" in sys.modules:  # already loaded in this process
            sys.modules["torch"]._logging.set_logs(**dict.fromkeys(QUIET_TORCH_LOGS, logging.ERROR))
    if not sys.warnoptions:  # a user's -W / PYTHONWARNINGS decides otherwise
        import warnings

        for category in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", category=category)
