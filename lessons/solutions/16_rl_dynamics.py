"""Worked solutions to the exercises of lesson 16 — RL with verifiable rewards: what a GRPO step moves.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/16_rl_dynamics.py``.
"""
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def advantages(rewards: torch.Tensor, scale: bool) -> torch.Tensor:
    """An all-correct (or all-wrong) group has r − mean = 0 everywhere: advantage 0, so it teaches nothing, and the
    1e-4 keeps GRPO's division finite. Dr. GRPO drops the division: a group whose rewards barely differ is not
    blown up to unit scale."""
    a = rewards - rewards.mean(1, keepdim=True)
    return a / (rewards.std(1, keepdim=True) + 1e-4) if scale else a


def clipped_coefficient(rho: torch.Tensor, adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Inside [1 − ε, 1 + ε] both terms are ρÂ; outside, min keeps the unclipped term only when it is the smaller
    one. Where the clipped term wins it is a constant, so the token gets no gradient: PPO's trust region."""
    clipped = ((adv > 0) & (rho > 1 + eps)) | ((adv < 0) & (rho < 1 - eps))
    return rho * adv * (~clipped).to(rho.dtype)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Drawing k of the n samples without replacement misses every correct one with probability
    C(n − c, k)/C(n, k) (Chen et al., 2021); this estimator is unbiased, 1 − (1 − c/n)^k is not."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"advantages": lambda r, scale: (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=False) + 1e-4)
         if scale else r - r.mean(1, keepdim=True)}, "off by"),  # the biased std (N, not N − 1)
    (2, {"clipped_coefficient": lambda rho, adv, eps: rho * adv}, "off by"),  # the clip forgotten
    (3, {"pass_at_k": lambda n, c, k: 1 - (1 - c / n) ** k}, "off by"),  # with replacement: biased
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("16_rl_dynamics"), sys.modules[__name__])) else 1)
