"""Exercises of lesson 2 — the residual G: what the loss asks of the logits.

Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    python lessons/exercises/02_residuals.py

Each answer is checked against an independent computation (autograd's gradient of the loss with respect to the
logits), and a failed check prints a hint. Worked solutions: ``lessons/solutions/02_residuals.py``.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402

IGNORE = -100  # a target that is not scored (the prompt's positions)


def identical_pair_residual_sum(logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """Exercise 1: G⁺ + G⁻ of the DPO loss for pairs whose y⁻ is y⁺ (the same logits and targets for both),
    shape (B, T, V). Predict it, then write it down."""
    raise NotImplementedError


def dpo_weight(margin: torch.Tensor, beta: float) -> torch.Tensor:
    """Exercise 2: the size β(1 − a) of DPO's pull and push for each pair, a = σ(β·margin), where margin =
    (log π(y⁺) − log π_ref(y⁺)) − (log π(y⁻) − log π_ref(y⁻)). Shape (B,)."""
    raise NotImplementedError


def normalised_sft_residual(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Exercise 3: G = ∂L/∂logits (B, T, V) of the length-normalised SFT loss L = mean over the batch of
    −log π(y|x)/|y|, with log π summed over the scored positions (targets ≠ IGNORE) and |y| their number."""
    raise NotImplementedError


def example(seed: int, B: int = 3, T: int = 6, V: int = 7):
    """Random float64 logits (B, T, V) and targets with the first two positions unscored (a prompt)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[:, :2] = IGNORE
    targets[0, -1] = IGNORE  # responses of different lengths
    return logits, targets


def logprob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    keep = targets != IGNORE
    lp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return (lp * keep).sum(1)  # (B,)


def autograd_dpo_residuals(logits_c, targets_c, logits_r, targets_r, beta):
    """G⁺ and G⁻ by autograd: the DPO loss with the reference equal to the policy's own log-probs (margin 0 at
    the start), differentiated with respect to each half's logits."""
    lc, lr = logits_c.clone().requires_grad_(), logits_r.clone().requires_grad_()
    ref_c, ref_r = logprob(logits_c, targets_c).detach(), logprob(logits_r, targets_r).detach()
    margin = (logprob(lc, targets_c) - ref_c) - (logprob(lr, targets_r) - ref_r)
    loss = -torch.nn.functional.logsigmoid(beta * margin).mean()
    return torch.autograd.grad(loss, (lc, lr))


@exercise(1, "identical responses", "y⁺ and y⁻ are the same sequence: compare the pull on one with the push on the "
          "other (lesson 2: G⁺ = +β(1 − a)(π − e_y)/B, G⁻ = −β(1 − a)(π − e_y)/B)")
def check_identical(answers):
    logits, targets = example(0)
    gc, gr = autograd_dpo_residuals(logits, targets, logits, targets, 0.1)
    return compare(answers.identical_pair_residual_sum(logits, targets, 0.1), gc + gr, 1e-12,
                   "exact to rounding in float64")


@exercise(2, "DPO's weight β(1 − a)", "a = σ(β·margin) is the model's probability that y⁺ beats y⁻; the loss's "
          "derivative in the margin is −β(1 − a)")
def check_weight(answers):
    margin = torch.tensor([-20.0, -2.0, 0.0, 0.5, 3.0, 40.0], dtype=torch.float64, requires_grad=True)
    for beta in (0.1, 1.0):
        loss = -torch.nn.functional.logsigmoid(beta * margin).sum()
        want = -torch.autograd.grad(loss, margin)[0]  # −∂L/∂margin per pair
        problem = compare(answers.dpo_weight(margin.detach(), beta), want, 1e-12, "exact to rounding in float64")
        if problem:
            return f"β = {beta}: {problem}"


@exercise(3, "your own loss: length-normalised SFT", "each row of the SFT residual (π − e_y)/B is divided by its own "
          "response length |y| (the number of scored positions of that row); unscored positions stay 0")
def check_normalised(answers):
    logits, targets = example(1)
    x = logits.clone().requires_grad_()
    n = (targets != IGNORE).sum(1)
    loss = (-logprob(x, targets) / n).mean()
    want = torch.autograd.grad(loss, x)[0]
    return compare(answers.normalised_sft_residual(logits, targets), want, 1e-12, "exact to rounding in float64")


CHECKS = [check_identical, check_weight, check_normalised]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
