"""``export``: checkpoint -> split graphs -> ONNX files + tokenizer + golden data -> verify -> manifest.

Everything is written into a temporary sibling of the output directory and renamed into place at the end, so
a failed export leaves nothing that looks finished. Parity is recorded in the manifest; a failed parity check
still keeps the artifacts (to inspect) and the caller exits 1.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.recipes import Recipe, load_recipe

FORMATS = {"onnx": ("fp32", "fp16")}


@dataclass(frozen=True)
class ExportOptions:
    ckpt: Path
    out: Path
    format: str = "onnx"
    precision: str = "fp32"
    recipe: str | None = None
    force: bool = False
    vision_tower: Path | None = None
    samples: Path | None = None  # folder with questions.json; default: the demo's samples
    simplify: bool = True


def check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"-o {out}: directory exists and is not empty (use --force to replace it)")


def resolve_recipe(name: str | None, target: str, precision: str) -> Recipe:
    recipe = load_recipe(name or f"{target}-{precision}")
    if recipe.target != target or recipe.precision != precision:
        raise UserError(f"--recipe {name}: is for {recipe.target}/{recipe.precision}, not {target}/{precision}")
    return recipe


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def model_record(ckpt) -> dict:
    from mobilevlm_export.checkpoint.prompt import IMAGE_TOKEN_INDEX
    from mobilevlm_export.graphs.contracts import ModelDims

    return {"dims": ModelDims.from_checkpoint(ckpt).__dict__, "eos_token_id": ckpt.eos_token_id,
            "bos_token_id": ckpt.tokenizer.bos_token_id, "image_token_index": IMAGE_TOKEN_INDEX,
            "preprocess": ckpt.preprocess.to_dict(), "vision_tower_source": ckpt.report.tower,
            "projector": ckpt.config.projector_type}


def checkpoint_record(ckpt) -> dict:
    return {"path": str(ckpt.config.path.resolve()),
            "config_sha256": hashlib.sha256((ckpt.config.path / "config.json").read_bytes()).hexdigest()}


def export(opts: ExportOptions, progress=None):
    """Run the export. Returns (manifest, VerifyReport). ``progress(description, total)`` -> advance callable."""
    from mobilevlm_export.backends.onnx import export_graph
    from mobilevlm_export.checkpoint.model import load_checkpoint
    from mobilevlm_export.golden import demo_pairs, load_pairs, make_golden, save_golden
    from mobilevlm_export.graphs.split import split
    from mobilevlm_export.manifest import read_manifest, update_manifest, versions, write_manifest
    from mobilevlm_export.runtime.artifacts import ArtifactSet
    from mobilevlm_export.verify import verify_artifacts, verify_steps

    if opts.format not in FORMATS:
        raise UserError(f"--format {opts.format}: unknown (known: {', '.join(FORMATS)})")
    if opts.precision not in FORMATS[opts.format]:
        raise UserError(f"--precision {opts.precision}: unknown for {opts.format} "
                        f"(known: {', '.join(FORMATS[opts.format])})")
    check_output_dir(opts.out, opts.force)
    recipe = resolve_recipe(opts.recipe, opts.format, opts.precision)
    pairs = load_pairs(opts.samples) if opts.samples else demo_pairs()
    step = progress or (lambda _d, _t: (lambda: None))

    t0 = time.perf_counter()
    done = step("Loading checkpoint", 1)
    ckpt = load_checkpoint(opts.ckpt, opts.vision_tower)
    done()
    graphs = split(ckpt, opts.precision, recipe.fused_image_encoder)
    staging = Staging(opts.out, opts.force)
    with staging as tmp:
        record: dict = {}
        advance = step("Exporting graphs to ONNX", len(graphs))
        for g in graphs:
            info = export_graph(g, tmp / "graphs" / f"{g.name}.onnx", simplify=opts.simplify)
            record[g.name] = {"file": f"graphs/{info.file}", "contract": g.contract.to_dict(), "export": info.to_dict()}
            advance()
        del graphs
        ckpt.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        advance = step("Reference outputs (golden data)", 1)
        arrays, e2e = make_golden(ckpt, pairs, recipe.fused_image_encoder, recipe.max_new_tokens)
        save_golden(tmp, arrays, e2e)
        advance()
        write_manifest(tmp, {
            "tool": "mobilevlm_export", "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "backend": opts.format, "format": opts.format, "precision": opts.precision,
            "checkpoint": checkpoint_record(ckpt), "recipe": recipe.to_dict(), "model": model_record(ckpt),
            "graphs": record, "versions": versions(),
        })
        del ckpt
        art = ArtifactSet(tmp, read_manifest(tmp, check=False))
        advance = step("Verifying parity", verify_steps(art))
        report = verify_artifacts(art, progress=advance)
        manifest = update_manifest(tmp, verification=report.to_dict(), build={
            "seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(peak_rss_mb(), 1)})
        staging.commit()
    return manifest, report
