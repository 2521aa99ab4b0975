"""Worked solutions to the exercises of lesson 13 — data parallelism, simulated in one process.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/13_scaling_up.py``.
"""
import sys
from pathlib import Path

import torch

from tinyld.distributed import shard
from tinyld.losses import sft_loss, token_logprobs

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def ranks_gradient(model, batch, world: int) -> torch.Tensor:
    """What DDP does, one rank after the other: each rank's gradient on its shard, then the mean over ranks.
    The SFT loss is a mean over sequences and every shard holds B/world of them, so the mean of the ranks'
    gradients is the whole batch's gradient in exact arithmetic. In floating point the sums run in another order
    (each rank adds its own sequences, then the ranks are averaged): on the lesson's batch the two agree to
    about 2e-7 of the largest entry in float32, not bit for bit, and to about 4e-16 in float64. A training run on
    two processes and one on one process therefore differ in the last bits from the first step on, and every
    later step builds on that: their losses agree closely but not exactly."""
    grads = []
    for rank in range(world):
        part = shard(batch, rank, world)
        model.zero_grad()
        sft_loss(model(part.idx), part.targets).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))  # (P,)
    model.zero_grad()
    return torch.stack(grads).mean(0)  # (P,)


def sequence_weights(rows_per_rank: list[list[int]], B: int) -> torch.Tensor:
    """Rank r's loss is (1/n_r) Σ_{i ∈ rank r} ℓ_i, and DDP divides the sum of the ranks' gradients by R, so
    sequence i weighs Σ_{r holding i} 1/(R·n_r). With equal shares that is 1/B for everyone: the global gradient.
    With both ranks on the first half, the first four sequences weigh 2/8 and the last four 0: no check between
    the ranks fails (they agree with each other), but the check against the global gradient does, and training
    would silently learn from half of every batch. With shares of 2 and 6, each of the 2 weighs 3× one of the 6:
    the reason the global batch must divide evenly among the ranks."""
    w = torch.zeros(B, dtype=torch.float64)
    for held in rows_per_rank:
        for i in held:
            w[i] += 1.0 / (len(rows_per_rank) * len(held))
    return w  # (B,)


def safe_token_mean(logits: torch.Tensor, targets: torch.Tensor, global_tokens: int, world: int) -> torch.Tensor:
    """Every rank divides its token sum by the same number, N_global / R. The average over R ranks is then
    (1/R) Σ_r S_r / (N_global / R) = Σ_r S_r / N_global: the token mean of the whole batch, whatever the ranks'
    token counts. The price is one all-reduce of the counts before the loss (a few bytes)."""
    mask = targets != -100  # (b, T)
    return -(token_logprobs(logits, targets) * mask).sum() / (global_tokens / world)


def _summed(model, batch, world):
    return ranks_gradient(model, batch, world) * world


def _equal_share(rows_per_rank, B):
    w = torch.zeros(B, dtype=torch.float64)
    for held in rows_per_rank:
        w[held] += 1.0 / B
    return w


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"ranks_gradient": _summed}, "off by"),  # the ranks' gradients summed, not averaged
    (2, {"sequence_weights": _equal_share}, "2 and 6 sequences"),  # 1/B for each sequence held, whatever the share
    (3, {"safe_token_mean": lambda logits, targets, n, world: -(token_logprobs(logits, targets)).sum() / n},
     "off by"),  # divided by the global count without the factor R: the averaged gradient is R times too small
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("13_scaling_up"), sys.modules[__name__])) else 1)
