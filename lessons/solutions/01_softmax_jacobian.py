"""Worked solutions to the exercises of lesson 1 — the softmax Jacobian A = I − 1πᵀ.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/01_softmax_jacobian.py``.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def spectrum(V: int) -> list[float]:
    """A·1 = 1 − 1(πᵀ1) = 0, so 1 is an eigenvector with eigenvalue 0. Every v with πᵀv = 0 (a space of dimension
    V − 1) has A·v = v: eigenvalue 1. So: one 0 and V − 1 ones, whatever π is."""
    return [0.0] + [1.0] * (V - 1)


def symmetric_logits(V: int) -> torch.Tensor:
    """A = I − 1πᵀ is symmetric iff 1πᵀ = π1ᵀ, i.e. π_j = π_i for all i, j: the uniform π, which any constant
    logits give (softmax ignores a shift)."""
    return torch.zeros(V, dtype=torch.float64)


def lower_likely_class(z: torch.Tensor) -> torch.Tensor:
    """Δ log π = A·Δz with row i of A equal to e_i − π: (A·(−e_k))_i = −[i = k] + π_k. Every other class gains
    π_k (the same amount for all of them), and class k loses 1 − π_k."""
    pi = torch.softmax(z.double(), -1)
    k = int(pi.argmax())
    return pi[k] - torch.eye(len(pi), dtype=torch.float64)[k]


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"spectrum": lambda V: [1.0] * V}, "off by 1"),  # A·1 = 0 forgotten: A is not the identity
    (2, {"symmetric_logits": lambda V: torch.arange(V, dtype=torch.float64)}, "A must equal its transpose"),
    (3, {"lower_likely_class": lambda z: -lower_likely_class(z)}, "off by"),  # the sign of Δz = −e_k
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("01_softmax_jacobian"), sys.modules[__name__])) else 1)
