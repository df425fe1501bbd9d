"""Next-token selection shared by the reference and every runtime: greedy or sampled, numpy only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mobilevlm_export.errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    """``temperature == 0`` is greedy. ``top_k == 0`` and ``top_p == 1`` disable those filters; ``top_p == 0``
    keeps the most likely token only. ``UserError`` (naming the flag) for values outside those ranges."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise UserError(f"--temperature {self.temperature}: must be a finite number >= 0 (0 = greedy)")
        if not (math.isfinite(self.top_p) and 0 <= self.top_p <= 1):
            raise UserError(f"--top-p {self.top_p}: must be in [0, 1]")
        if self.top_k < 0:
            raise UserError(f"--top-k {self.top_k}: must be >= 0 (0 = no top-k filter)")
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens {self.max_new_tokens}: must be >= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def select_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick the next token from the logits of the last position ([vocab])."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if params.greedy:
        return int(np.argmax(logits))
    # shifted before the division: a tiny temperature sends the others to -inf (probability 0), never to NaN
    with np.errstate(over="ignore"):
        z = (logits - logits.max()) / params.temperature
    if params.top_k > 0 and params.top_k < z.size:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = np.cumsum(p[order]) - p[order] < params.top_p
        keep[0] = True  # the most likely token always stays (top_p = 0 included)
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))
