"""The output directory of a build: checked before any work, written as a staging sibling, renamed at the end."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mobilevlm_export.errors import UserError


def check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"-o {out}: directory exists and is not empty (use --force to replace it)")


class Staging:
    """A temporary directory beside ``out``, renamed to ``out`` by ``commit()``, removed on failure."""

    def __init__(self, out: Path, force: bool) -> None:
        self.out, self.force = out, force
        self.path = out.parent / f".{out.name}.partial-{os.getpid()}"

    def __enter__(self) -> Path:
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        return self.path

    def commit(self) -> None:
        if self.out.exists():
            shutil.rmtree(self.out)
        self.path.rename(self.out)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
