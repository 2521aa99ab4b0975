"""Worked solutions to the exercises of lesson 15 — why did my chosen log-prob fall?

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/15_why_did_chosen_fall.py``.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def dpo_weight(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """L = −log σ(βm), so ∂L/∂log π(y⁺) = −β(1 − σ(βm)) = −β σ(−βm) and ∂L/∂log π(y⁻) = +β σ(−βm): one weight for
    both halves, β/2 when the policy is its own reference (m = 0), fading as the margin grows."""
    m = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)
    return beta * torch.sigmoid(-beta * m)


def forecast_chosen(g_plus: torch.Tensor, g_minus: torch.Tensor, c: float) -> float:
    """Δθ = −η∇L = η·c·(g⁺ − g⁻); Δ log π(y⁺) ≈ ⟨g⁺, Δθ⟩ = η·c·(‖g⁺‖² − ⟨g⁺, g⁻⟩): the pull of y⁺'s own gradient
    minus the push on y⁻, felt through how alike the two gradients are."""
    return (c * (g_plus @ g_plus - g_plus @ g_minus)).item()


def alpha_to_hold(dpo_change: float, sft_change: float, n_chosen: int) -> float:
    """RPO's extra term α·NLL(y⁺)/n⁺ is an SFT step on y⁺ weighted α/n⁺, so (linearity of the first-order step)
    its forecast is dpo_change + α·sft_change/n⁺, zero at α = −n⁺·dpo_change/sft_change. (`tinyld.explain.fixes`
    reports it per pair as ``alpha_needed``.)"""
    return -n_chosen * dpo_change / sft_change


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"dpo_weight": lambda lc, lr, rc, rr, beta: beta * torch.sigmoid(beta * ((lc - rc) - (lr - rr)))},
     "off by"),  # σ(βm) for σ(−βm): the weight that grows as the pair is learnt
    (2, {"forecast_chosen": lambda gp, gm, c: (c * (gp @ gp + gp @ gm)).item()}, "off by"),  # the push's sign
    (3, {"alpha_to_hold": lambda d, s, n: -d / s}, "not 0"),  # n⁺ forgotten: RPO's NLL is per token
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("15_why_did_chosen_fall"), sys.modules[__name__])) else 1)
