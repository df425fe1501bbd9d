"""What the suite measures, made once and cached under ``--out`` (``cache.entry``): the checkpoint of a shape,
every row's program (ours through the CLI, export_llm's, ONNX Runtime's int4 rewrite), and each row's accuracy on
the trained demo checkpoint; each made in a fresh process."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from mobilevlm_export.benchsuite import cache
from mobilevlm_export.benchsuite.rows import (
    BEFORE,
    BY_NAME,
    EAGER,
    EXPORT_LLM,
    ORT_INT4,
    OURS,
    Row,
    recipe_at,
    recipe_text,
)
from mobilevlm_export.benchsuite.timing import worker
from mobilevlm_export.cores import usable_cores
from mobilevlm_export.errors import UserError

CLI = "mobilevlm_export/cli.py"


def checkpoint(shape: str, out: Path, log) -> tuple[Path, dict]:
    """The checkpoint of ``shape``: the bundled demo, or a synthetic one written once into the cache."""
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

    if shape == "demo":
        return demo_checkpoint_dir(), {"cached": True, "bundled": True}
    record = cache.shape_record(shape)

    def make(d: Path) -> dict:
        return worker({"task": "checkpoint", "out": str(d / "ckpt"), "shape": shape})

    entry, info = cache.entry(out / "checkpoints", shape, record, make, log)
    return entry / "ckpt", info


def resolve_commit(ref: str) -> str:
    """The full hash of git commit ``ref`` in the checkout the package runs from; ``UserError`` naming ``--before``
    when there is no checkout or no such commit."""
    import subprocess

    repo = cache.PACKAGE.parent
    res = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=repo,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise UserError(f"--before {ref}: not a commit of the git checkout at {repo}")
    return res.stdout.strip()


def source_at(commit: str, out: Path, log) -> Path:
    """The package's files at ``commit`` (``git archive`` of its checkout), extracted once into
    ``out/sources``: what builds a ``BEFORE`` row (first on ``PYTHONPATH``; today's runtime times it and measures
    its accuracy, as every row's, so that the two rows differ only in the program). ``UserError`` when that commit
    has no package to build with."""
    import io
    import subprocess
    import tarfile

    repo = cache.PACKAGE.parent

    def make(d: Path) -> dict:
        tar = subprocess.run(["git", "archive", "--format=tar", commit], cwd=repo, capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as t:
            t.extractall(d / "src", filter="data")
        if not (d / "src" / CLI).is_file():
            raise UserError(f"--before {commit[:12]}: that commit has no {CLI} to build with")
        subject = subprocess.run(["git", "log", "-1", "--format=%s", commit], cwd=repo, capture_output=True,
                                 text=True).stdout.strip()
        return {"commit": commit, "subject": subject}

    entry, _ = cache.entry(out / "sources", commit[:12], {"kind": "source", "commit": commit}, make, log,
                           "extracting the package at")
    return entry / "src"


def artifact_bytes(root: Path, manifest: dict) -> int:
    """Bytes of the files the host's runtime loads: each graph record's file (once) and its external data."""
    files = {g["file"] for g in manifest["graphs"].values()}
    total = 0
    for rel in files:
        for p in (root / rel, root / (rel + ".data")):
            if p.is_file():
                total += p.stat().st_size
    return total


def build_ours(row: Row, ckpt: Path, shape: str, out: Path, threads: int, log,
               source: Path | None = None) -> tuple[Path, dict]:
    """``row`` built by ``mvlm-export build`` in a fresh process: today's package, or (``source``: a ``BEFORE``
    row) the package at ``row.commit`` from its own recipe file."""
    from mobilevlm_export.benchsuite.peers import run_measured
    from mobilevlm_export.schema import tomllib

    if source is None:
        text, path = recipe_text(row, out)
        package = cache.identity()
    else:
        path = recipe_at(source, row.recipe)
        if not path.is_file():
            raise UserError(f"--before {row.commit[:12]}: that commit has no recipes/{row.recipe}.toml")
        text, package = path.read_text(), {"commit": row.commit, "libraries": cache.identity()["libraries"]}
    # keyed by the recipe's values, not its text: a comment (the justification of a default, say) changes no build
    record = {"kind": row.kind, "target": row.target, "recipe": tomllib.loads(text),
              "checkpoint": cache.shape_record(shape), "package": package}

    def make(d: Path) -> dict:
        cmd = [sys.executable, "-m", "mobilevlm_export.cli", "build", str(ckpt), "--target", row.target, "--recipe",
               str(path), "-o", str(d / "artifacts"), "--no-bench", "--threads", str(min(threads, usable_cores())),
               "--json"]
        rc, wall, rss = run_measured(cmd, d, d / "build.log", source_env(source))
        # 1: a check failed. Parity below the recipe's bounds (random weights at full size) still leaves a build
        # to time; a failed compile check (lint, an operator fallback) leaves nothing and must not be cached
        manifest = d / "artifacts" / "manifest.json"
        built = manifest.is_file() and bool(json.loads(manifest.read_text()).get("verification"))
        if rc not in (0, 1) or not built:
            tail = (d / "build.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"build {row.recipe} failed (exit {rc}{'' if built else ', nothing built'}):\n{tail}")
        return {"wall_s": round(wall, 1), "peak_rss_mb": round(rss, 1), "rc": rc, "parity_passed": rc == 0,
                "command": " ".join(cmd[1:])}

    entry, info = cache.entry(out / "builds" / shape, row.name if source else row.recipe, record, make, log)
    return entry / "artifacts", info


def source_env(source: Path | str | None) -> dict | None:
    """The environment of a process run by the package at ``source`` (first on ``PYTHONPATH``); None: today's."""
    import os

    return None if source is None else {**os.environ, "PYTHONPATH": str(source)}


def build_export_llm(row: Row, ckpt: Path, shape: str, out: Path, log) -> tuple[Path, dict]:
    from importlib.metadata import version

    from mobilevlm_export.benchsuite.peers import EXPORT_LLM_MAX_SEQ, LlamaShape, export_llm, export_llm_command

    llama = LlamaShape.from_config(json.loads((ckpt / "config.json").read_text()))
    max_seq = min(EXPORT_LLM_MAX_SEQ, llama.context)
    record = {"kind": EXPORT_LLM, "shape": asdict(llama), "group_size": row.group_size, "max_seq_len": max_seq,
              "executorch": version("executorch"), "torchao": version("torchao"),
              # (the command without the interpreter and the paths, which depend on where the suite runs)
              "command": [a for a in export_llm_command(Path("P"), Path("O"), "N", row.group_size, max_seq)[1:]
                          if not a.startswith(("base.params=", "export.output_dir="))],
              "builder": cache.suite_digest("peers")}

    def make(d: Path) -> dict:
        return export_llm(d, llama, row.group_size, max_seq)

    entry, info = cache.entry(out / "builds" / shape, row.name, record, make, log)
    return entry / info["pte"], info


def build_ort_int4(fp32: Path, fp32_info: dict, shape: str, out: Path, log) -> tuple[Path, dict]:
    from importlib.metadata import version

    from mobilevlm_export.benchsuite.peers import ORT_INT4

    record = {"kind": ORT_INT4, "config": ORT_INT4, "onnxruntime": version("onnxruntime"),
              "fp32_build": fp32_info["key"], "package": cache.identity(), "builder": cache.suite_digest("peers")}

    def make(d: Path) -> dict:
        return worker({"task": "ort_int4", "fp32_dir": str(fp32), "out": str(d / "artifacts")})

    entry, info = cache.entry(out / "builds" / shape, "ort-int4-b32", record, make, log)
    return entry / "artifacts", info


def delegation(manifest: dict) -> list[dict] | None:
    """Per ExecuTorch method of a build: its XNNPACK and portable nodes and delegate subgraphs (the manifest's
    compile record; None for other targets)."""
    methods = (manifest.get("compile") or {}).get("methods")
    if not methods:
        return None
    return [{k: m.get(k) for k in ("method", "delegated_nodes", "portable_nodes", "delegated_subgraphs")}
            for m in methods]


def prepare(row: Row, ckpt: Path, shape: str, out: Path, threads: int, log, done: dict) -> dict:
    """Build (or find in the cache) ``row``'s program on ``ckpt`` (of ``shape``): ``{"path", "build",
    "artifact_bytes", "decoder_bytes_per_token", "costs", "target"}`` (ours also ``"source"``: the package that
    built a ``BEFORE`` row, and ``"delegation"``: ``delegation``). ``done``: rows prepared so far."""
    key = (row.name, shape)
    if key in done:
        return done[key]
    config = json.loads((ckpt / "config.json").read_text())
    if row.kind == EAGER:
        from mobilevlm_export.benchsuite.predict import decoder_linear_weights

        weights = decoder_linear_weights(config["hidden_size"], config["intermediate_size"],
                                         config["num_hidden_layers"], config["num_attention_heads"],
                                         config.get("num_key_value_heads") or config["num_attention_heads"],
                                         config["vocab_size"])
        prep = {"path": str(ckpt), "build": None, "artifact_bytes": None, "decoder_bytes_per_token": 4.0 * weights,
                "costs": None, "target": None}
    elif row.kind in (OURS, BEFORE):
        source = source_at(row.commit, out, log) if row.kind == BEFORE else None
        path, info = build_ours(row, ckpt, shape, out, threads, log, source)
        manifest = json.loads((path / "manifest.json").read_text())
        prep = {"path": str(path), "build": info, "artifact_bytes": artifact_bytes(path, manifest),
                "decoder_bytes_per_token": manifest["costs"]["decoder_bytes_per_token"], "costs": manifest["costs"],
                "target": row.target, "source": str(source) if source else None,
                "delegation": delegation(manifest)}
    elif row.kind == EXPORT_LLM:
        path, info = build_export_llm(row, ckpt, shape, out, log)
        embedding = config["vocab_size"] * config["hidden_size"] * 4  # fp32, read one row per token
        prep = {"path": str(path), "build": info, "artifact_bytes": info["bytes"],
                "decoder_bytes_per_token": info["bytes"] - embedding, "costs": None, "target": None}
    elif row.kind == ORT_INT4:
        fp32 = prepare(BY_NAME["onnx-fp32"], ckpt, shape, out, threads, log, done)
        path, info = build_ort_int4(Path(fp32["path"]), fp32["build"], shape, out, log)
        manifest = json.loads((path / "manifest.json").read_text())
        prep = {"path": str(path), "build": info, "artifact_bytes": artifact_bytes(path, manifest),
                "decoder_bytes_per_token": info["decoder_bytes"], "costs": None, "target": None}
    else:
        raise ValueError(row.kind)
    done[key] = prep
    return prep


def measure_accuracy(row: Row, demo: Path, out: Path, threads: int, samples: int, log, done: dict) -> dict | None:
    """Held-out accuracy and logits KL / top-1 vs fp32 of ``row``'s recipe built on the trained demo checkpoint
    (cached). None for export_llm (its programs are exported from random weights by its own model class)."""
    if row.kind == EXPORT_LLM or samples == 0:
        return None
    prep = prepare(row, demo, "demo", out, threads, log, done)
    record = {"kind": "accuracy", "row": row.name, "of": (prep["build"] or {}).get("key") or
              cache.shape_record("demo"), "samples": samples, "package": cache.identity(),
              "measurer": cache.suite_digest("worker")}

    def make(d: Path) -> dict:
        return worker({"task": "accuracy", "kind": OURS if row.kind == BEFORE else row.kind, "path": prep["path"],
                       "samples": samples, "threads": threads, "reverify": row.kind == ORT_INT4})

    _, info = cache.entry(out / "accuracy", row.name, record, make, log, "measuring the accuracy of")
    return {k: v for k, v in info.items() if k != "key"}
