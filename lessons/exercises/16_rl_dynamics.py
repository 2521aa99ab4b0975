"""Exercises of lesson 16 — RL with verifiable rewards: what a GRPO step moves.

Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    python lessons/exercises/16_rl_dynamics.py

Each answer is checked against an independent computation (a closed form written out in the check, autograd of the
clipped objective, counting subsets), and a failed check prints a hint. Worked solutions:
``lessons/solutions/16_rl_dynamics.py``.
"""
import itertools
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402


def advantages(rewards: torch.Tensor, scale: bool) -> torch.Tensor:
    """Exercise 1: Â for a (groups, G) table of rewards: r minus its group's mean, divided by the group's unbiased
    std + 1e-4 when ``scale`` (GRPO), not divided when not (Dr. GRPO). Predict first: a group of all-correct
    samples?"""
    raise NotImplementedError


def clipped_coefficient(rho: torch.Tensor, adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Exercise 2: c = −∂ℓ/∂log π_θ per token, for ℓ = −min(ρÂ, clip(ρ, 1 − ε, 1 + ε)Â) with ρ = π_θ/π_old;
    ``rho`` and ``adv`` are (N,)."""
    raise NotImplementedError


def pass_at_k(n: int, c: int, k: int) -> float:
    """Exercise 3: the unbiased pass@k from n samples of which c are correct: the chance that k of them, drawn
    without replacement, include a correct one."""
    raise NotImplementedError


@exercise(1, "group advantages", "subtract each row's mean; for GRPO divide by the row's std (unbiased, N − 1) "
          "plus 1e-4; an all-equal group has advantage 0, never a division by 0")
def check_advantages(answers):
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    m = [0.25, 1.0, 0.5]
    s = [math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 3), 0.0, math.sqrt(4 * 0.25 / 3)]
    for scale in (True, False):
        want = torch.tensor([[(x - m[i]) / ((s[i] + 1e-4) if scale else 1.0) for x in row]
                             for i, row in enumerate(r.tolist())], dtype=torch.float64)
        problem = compare(answers.advantages(r, scale), want, 1e-9, "a closed form in float64")
        if problem:
            return f"{'GRPO' if scale else 'Dr. GRPO'}: {problem}"


@exercise(2, "the clipped coefficient", "ℓ depends on log π through ρ = exp(log π − log π_old), so dρ/dlog π = ρ; "
          "the gradient is ρÂ unless min picks the clipped term outside the range: Â > 0 with ρ > 1 + ε, or Â < 0 "
          "with ρ < 1 − ε, where it is 0")
def check_clip(answers):
    g = torch.Generator().manual_seed(2)
    logp = (-torch.rand(40, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    old = logp.detach() + 0.4 * torch.randn(40, generator=g, dtype=torch.float64)
    adv = torch.randn(40, generator=g, dtype=torch.float64)
    rho = torch.exp(logp - old)
    loss = -torch.minimum(rho * adv, torch.clamp(rho, 0.8, 1.2) * adv).sum()
    grad, = torch.autograd.grad(loss, logp)
    return compare(answers.clipped_coefficient(rho.detach(), adv, 0.2), -grad, 1e-12, "float64 autograd")


@exercise(3, "pass@k", "1 − C(n − c, k)/C(n, k): the chance that k draws all miss is C(n − c, k)/C(n, k); it is "
          "0 when fewer than k samples are wrong")
def check_pass(answers):
    for n, c in ((6, 0), (6, 2), (8, 5), (5, 5)):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(outcomes, k))
            problem = compare(answers.pass_at_k(n, c, k), sum(any(s) for s in subsets) / len(subsets), 1e-12,
                              "counting every subset")
            if problem:
                return f"n={n}, c={c}, k={k}: {problem}"


CHECKS = [check_advantages, check_clip, check_pass]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
