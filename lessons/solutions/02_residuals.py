"""Worked solutions to the exercises of lesson 2 — the residual G.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/02_residuals.py``.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402

IGNORE = -100


def identical_pair_residual_sum(logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """G⁺ = +s(π − e_y)/B and G⁻ = −s(π − e_y)/B with the same π and y: they cancel exactly, G⁺ + G⁻ = 0. The
    pull and the push act on the same logits, so the pair teaches nothing (and the margin stays 0)."""
    return torch.zeros_like(logits)


def dpo_weight(margin: torch.Tensor, beta: float) -> torch.Tensor:
    """L = −log σ(β·margin), so ∂L/∂margin = −β(1 − σ(β·margin)) = −β(1 − a). The weight starts at β/2 (margin
    0) and fades once the model prefers y⁺ by a margin of a few 1/β. (In float64, 1 − σ(x) rounds to exactly 0
    once x > 37 or so, and to exactly 1 once x < −37 (σ(x) is then below half an ulp of 1): that is why lesson 2's
    strict bounds 0 < β(1 − a) < β fail at both ends for a large |β·margin|.)"""
    return beta * (1 - torch.sigmoid(beta * margin))


def normalised_sft_residual(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L = (1/B) Σ_b −log π(y_b)/|y_b|. The gradient of −log π(y_t) in the logits at position t is π_t − e_{y_t};
    each row gets the factor 1/(B·|y_b|), and unscored positions get 0."""
    B = logits.shape[0]
    keep = targets != IGNORE  # (B, T)
    pi = torch.softmax(logits, -1)  # (B, T, V)
    onehot = torch.nn.functional.one_hot(targets.clamp(min=0), logits.shape[-1]).to(logits.dtype)
    n = keep.sum(1).to(logits.dtype).view(-1, 1, 1)  # (B, 1, 1) response lengths
    return (pi - onehot) * keep[..., None] / (B * n)


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"identical_pair_residual_sum": lambda logits, targets, beta: 2 * normalised_sft_residual(logits, targets)},
     "off by"),  # the two halves added with the same sign
    (2, {"dpo_weight": lambda margin, beta: 1 - torch.sigmoid(beta * margin)}, "off by"),  # β left out
    (3, {"normalised_sft_residual": lambda logits, targets: normalised_sft_residual(logits, targets)
         * logits.shape[0]}, "off by"),  # the batch mean's 1/B left out
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("02_residuals"), sys.modules[__name__])) else 1)
