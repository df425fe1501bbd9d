"""Parity: per-graph tensor metrics against the golden reference, and end-to-end greedy-token agreement.

Metrics per output: max and mean absolute error, cosine similarity, and for logits the top-1 agreement (the
fraction of positions whose argmax equals the reference's) and the mean KL divergence of the artifact's next-token
distribution from the reference's (nats per position). Each is checked against the recipe's tolerance
for that output; the report lists the failures worst first (value relative to its bound). Torch-free: it runs
on a device with the backend's runtime, numpy and the golden data only.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mobilevlm_export.errors import UserError
from mobilevlm_export.generation import SamplingParams
from mobilevlm_export.manifest import GOLDEN_NPZ, MANIFEST, finite
from mobilevlm_export.recipes import Recipe, Tolerance, load_recipe
from mobilevlm_export.runtime.golden_reader import case_key, case_names, cases, load_golden


@dataclass
class Metric:
    graph: str
    case: str
    output: str
    max_abs: float
    mean_abs: float
    cosine: float
    top1: float | None
    kl: float | None = None
    failures: list[dict] = field(default_factory=list)  # {"metric", "value", "tolerance", "severity"}

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class E2EResult:
    image: str
    question: str
    reference_ids: list[int]
    ids: list[int]

    @property
    def match(self) -> bool:
        return self.ids == self.reference_ids

    @property
    def first_mismatch(self) -> int | None:
        for i, (a, b) in enumerate(zip(self.ids, self.reference_ids, strict=False)):
            if a != b:
                return i
        return None if self.match else min(len(self.ids), len(self.reference_ids))


@dataclass
class VerifyReport:
    metrics: list[Metric]
    e2e: list[E2EResult]
    token_agreement_min: float
    backend: str | None = None  # the runtime the artifacts ran on

    @property
    def token_agreement(self) -> float:
        return sum(r.match for r in self.e2e) / len(self.e2e) if self.e2e else 1.0

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.metrics) and self.token_agreement >= self.token_agreement_min

    def worst(self, n: int = 10) -> list[dict]:
        rows = [{"graph": m.graph, "case": m.case, "output": m.output, **f} for m in self.metrics for f in m.failures]
        return sorted(rows, key=lambda r: -r["severity"])[:n]

    def to_dict(self) -> dict:
        """The report as strict JSON data (a metric that is NaN or infinite is None)."""
        return finite({
            "passed": self.passed,
            "backend": self.backend,
            "token_agreement": self.token_agreement,
            "token_agreement_min": self.token_agreement_min,
            "worst": self.worst(),
            "metrics": [{**asdict(m), "passed": m.passed} for m in self.metrics],
            "e2e": [{**asdict(r), "match": r.match, "first_mismatch": r.first_mismatch} for r in self.e2e],
        })


def compare(got: np.ndarray, want: np.ndarray, tol: Tolerance, is_logits: bool) -> tuple[dict, list[dict]]:
    """Metrics of ``got`` against ``want`` and the tolerance failures among them."""
    if got.shape != want.shape:
        fail = {"metric": "shape", "value": list(got.shape), "tolerance": list(want.shape), "severity": float("inf")}
        return {"max_abs": float("inf"), "mean_abs": float("inf"), "cosine": 0.0, "top1": 0.0 if is_logits else None,
                "kl": float("inf") if is_logits else None}, [fail]
    g, w = got.astype(np.float64), want.astype(np.float64)
    diff = np.abs(g - w)
    denom = np.linalg.norm(g) * np.linalg.norm(w)
    cos = float(np.dot(g.ravel(), w.ravel()) / denom) if denom > 0 else float(np.array_equal(g, w))
    m = {"max_abs": float(diff.max(initial=0.0)), "mean_abs": float(diff.mean()) if diff.size else 0.0,
         "cosine": cos, "top1": None, "kl": None}
    if is_logits:
        m["top1"] = float(np.mean(g.argmax(-1) == w.argmax(-1)))
        m["kl"] = kl_divergence(w, g)
    if not np.all(np.isfinite(g)):
        return m, [{"metric": "finite", "value": "nan/inf", "tolerance": "finite", "severity": float("inf")}]
    fails = []
    for name, bound, over in (("max_abs", tol.max_abs, True), ("mean_abs", tol.mean_abs, True),
                              ("cosine", tol.cosine_min, False), ("top1", tol.top1_min, False),
                              ("kl", tol.kl_max, True)):
        value = m[name]
        if bound is None or value is None:
            continue
        bad = value > bound if over else value < bound
        if bad:
            severity = value / bound if over and bound > 0 else (1 - value) / max(1 - bound, 1e-12)
            fails.append({"metric": name, "value": value, "tolerance": bound, "severity": float(severity)})
    return m, fails


def kl_divergence(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(logits)) along the last axis, in nats."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        z = x - x.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lq = log_softmax(ref_logits.astype(np.float64)), log_softmax(logits.astype(np.float64))
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


def _as_contract(runner, name: str, want: np.ndarray) -> np.ndarray:
    """The reference output as the graph's contract shapes it: a decoder that returns only the last position's
    logits (dim 1 fixed at 1) is compared with the reference's last position."""
    spec = next((t for t in runner.contract.outputs if t.name == name), None)
    if spec is not None and len(spec.dims) == 3 and spec.dims[1] == 1 and want.ndim == 3 and want.shape[1] > 1:
        return want[:, -1:]
    return want


def verify_graphs(runners: dict, golden: dict[str, np.ndarray], recipe: Recipe, progress=None) -> list[Metric]:
    out = []
    for (graph, case), (ins, refs) in cases(golden).items():
        if graph not in runners:
            continue
        got = runners[graph].run(ins)
        for name, want in refs.items():
            want = _as_contract(runners[graph], name, want)
            m, fails = compare(got[name], want, recipe.tolerance(name), name == "logits")
            out.append(Metric(graph, case, name, failures=fails, **m))
        if progress:
            progress()
    return out


def verify_e2e(pipeline, golden: dict[str, np.ndarray], e2e: list[dict], max_new_tokens: int,
               progress=None) -> list[E2EResult]:
    results = []
    seen: dict[bytes, np.ndarray] = {}  # an image's embeddings once, however many questions ask about it
    for i, item in enumerate(e2e):
        n = max(max_new_tokens, len(item["reference_ids"]))
        px = golden[f"e2e/{i}/pixel_values"]  # (one image, [3, H, W])
        key = hashlib.sha256(px.tobytes()).digest()
        if key not in seen:
            seen[key] = pipeline.image_embeds(px[None])
        ids, _ = pipeline.generate_ids(item["prompt_ids"], px, SamplingParams(max_new_tokens=n), image=seen[key])
        results.append(E2EResult(item["image"], item["question"], item["reference_ids"], ids))
        if progress:
            progress()
    return results


def write_junit(report: VerifyReport, path: Path) -> None:
    """One testcase per metric row and per end-to-end pair (JUnit XML, for CI dashboards)."""
    from xml.etree import ElementTree as ET

    suite = ET.Element("testsuite", name="mobilevlm_export.verify")
    n = fails = 0
    for m in report.metrics:
        n += 1
        case = ET.SubElement(suite, "testcase", classname=f"{m.graph}.{m.case}", name=m.output)
        if m.failures:
            fails += 1
            msg = "; ".join(f"{f['metric']}={f['value']} (tolerance {f['tolerance']})" for f in m.failures)
            ET.SubElement(case, "failure", message=msg)
    for r in report.e2e:
        n += 1
        case = ET.SubElement(suite, "testcase", classname="e2e", name=f"{r.image}: {r.question}")
        if not r.match:
            fails += 1
            ET.SubElement(case, "failure", message=f"tokens {r.ids} != reference {r.reference_ids}")
    suite.set("tests", str(n))
    suite.set("failures", str(fails))
    from mobilevlm_export.files import write_file_atomic

    write_file_atomic(path, ET.tostring(suite, encoding="utf-8", xml_declaration=True))


def gate_recipe(art, name_or_path: str | None) -> Recipe:
    """The recipe whose tolerances ``verify`` checks: the recipe ``name_or_path`` (``recipes/NAME.toml`` or a
    path), which must be one of the build's target (``UserError`` otherwise), so that an edited manifest cannot
    loosen a CI gate; the manifest's own copy when None."""
    if name_or_path is None:
        return art.recipe
    recipe = load_recipe(name_or_path)
    target = art.manifest["target"]
    if recipe.target != target:
        raise UserError(f"--recipe {name_or_path}: is a recipe for target {recipe.target}, but {art.root / MANIFEST} "
                        f"is a build for target {target}")
    return recipe


def verify_artifacts(art, threads: int | None = None, progress=None, recipe: Recipe | None = None) -> VerifyReport:
    """Verify an opened artifact directory (``runtime.artifacts.ArtifactSet``) against its golden data, with the
    tolerances and token agreement of ``recipe`` (default: the manifest's). The end-to-end pairs are generated with
    the build's own ``e2e.max_new_tokens`` (the manifest's recipe), which its reference ids were made with: a gate
    recipe judges, it does not change what is compared. ``UserError`` when a graph has no golden case."""
    golden, e2e = load_golden(art.root)
    checked = {graph for graph, _ in cases(golden)}
    unchecked = [g for g in art.manifest["graphs"] if g not in checked]
    if unchecked:
        raise UserError(f"{art.root / GOLDEN_NPZ}: has no golden case of graph {unchecked[0]} (rebuild to recreate "
                        "it)")
    check_golden(golden, art.manifest["graphs"], art.root / GOLDEN_NPZ, art.manifest["model"]["dims"]["vocab"])
    recipe = recipe or art.recipe
    runners = art.runners(threads)
    metrics = verify_graphs(runners, golden, recipe, progress)
    results = verify_e2e(art.generator(runners), golden, e2e, art.recipe.e2e.max_new_tokens, progress)
    return VerifyReport(metrics, results, recipe.e2e.token_agreement_min, runners["decoder"].backend)


def check_golden(arrays: dict[str, np.ndarray], graphs: dict[str, dict], npz: Path, vocab: int | None = None) -> None:
    """``UserError`` naming the npz and the array unless every golden case of a graph holds each input of the
    graph's contract with its rank, fixed dims and kind of dtype, and each output with its kind of dtype (what the
    runners are fed and compared with: an npz re-signed after an edit must not reach them), and every
    ``input_ids`` lies in the vocabulary (``vocab``: the model's size) before a graph reads it."""
    from mobilevlm_export.graphs.contracts import GraphContract

    for key, a in arrays.items():  # (pixel values included: an empty array only makes NaN metrics and warnings)
        if a.size == 0 and case_key(key) is None:
            raise UserError(f"{npz}: {key} is empty ({a.dtype}{list(a.shape)})")
    for (graph, case), (ins, outs) in cases(arrays).items():
        if graph not in graphs:
            continue
        contract = GraphContract.from_dict(graphs[graph]["contract"])
        for kind, specs, have in (("in", contract.inputs, ins), ("out", contract.outputs, outs)):
            for t in specs:
                key = f"{graph}/{case}/{kind}/{t.name}"
                if t.name not in have:
                    raise UserError(f"{npz}: {key} is missing")
                a = have[t.name]
                fixed_ok = kind == "out" or (a.ndim == len(t.dims) and all(  # (a reference output may hold more:
                    isinstance(d, str) or d == n for d, n in zip(t.dims, a.shape, strict=True)))  # every position)
                if not fixed_ok or np.dtype(t.dtype).kind != a.dtype.kind:
                    raise UserError(f"{npz}: {key} is {a.dtype}{list(a.shape)}; the contract says "
                                    f"{t.dtype}{list(t.dims)}")
                # an input may be empty along a dim whose range starts at 0 (a prefill's past), an output never
                empty = [d for d, n in zip(t.dims, a.shape, strict=False) if n == 0
                         and (kind == "out" or not _may_be_empty(d, contract.ranges))]
                if empty or (kind == "out" and a.size == 0):
                    raise UserError(f"{npz}: {key} is empty ({a.dtype}{list(a.shape)}"
                                    + (f"; dim {empty[0]} is 0" if empty else "") + "); a golden case holds at least "
                                    "one of each (rebuild to recreate it)")
                if t.name == "input_ids" and vocab is not None and a.size and (a.min() < 0 or a.max() >= vocab):
                    raise UserError(f"{npz}: {key} holds token ids {int(a.min())}..{int(a.max())}, outside the "
                                    f"model's vocabulary of {vocab}")


def _may_be_empty(dim, ranges: dict) -> bool:
    """Whether a golden input may have 0 along ``dim``: a symbol whose range starts at 0 (a prefill's ``past``; by
    name where an older manifest records no ranges), never a fixed size or another symbol."""
    if not isinstance(dim, str):
        return False
    r = ranges.get(dim)
    return r.min == 0 if r is not None else dim == "past"


def verify_steps(art) -> int:
    """How many progress steps ``verify_artifacts`` reports (graph cases + e2e pairs)."""
    names, pairs = case_names(art.root)
    return sum(g in art.manifest["graphs"] for g, _ in names) + pairs
