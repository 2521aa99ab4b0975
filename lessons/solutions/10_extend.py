"""Worked solutions to the exercises of lesson 10 — the extend fix, and its honest effect size.

Run this file to see them pass the same checks as your answers: ``TINYLD_FAST=1 python lessons/solutions/10_extend.py``.
"""
import copy
import math
import sys
from pathlib import Path

import torch

from tinyld.data import make_batch
from tinyld.evaluate import response_logprobs
from tinyld.losses import dpo_loss, sequence_logprob

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def sign_test(wins, losses):
    """A tie says nothing about which model is better, so the test looks at the decided comparisons only. If the
    two models were equally good, each would be a fair coin, and the number of extend's wins X ~ Binomial(n, ½)
    with n = wins + losses. The p-value is the chance of a split at least as lopsided as the one seen, on either
    side: 2·P(X ≤ min(wins, losses)), capped at 1. Counts like the lesson's in fast mode, 9 against 11 or 12
    against 10, give p ≈ 0.8: a coin does that most of the time, so their sign is noise. 15 against 3 gives
    p ≈ 0.008. Sixteen samples per prompt give about four times as many decided answers, so a real difference of
    the same size gets a smaller p; a sign that was noise may flip. (The answers to one prompt share the prompt
    and the models, so they are not independent coins: the test is, if anything, too ready to see a difference.)"""
    n, k = wins + losses, min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n  # P(X ≤ k), exact
    return min(1.0, 2 * tail)


def rejected_lift(extend, baseline, tok, prompts, rejected):
    """Per token, because the two worlds' y⁻ differ in length (a short wrong fact in the easy world, a fact and a
    long random tail in the hard one), and a summed log-prob grows with the length. In fast mode extend's SFT lifts
    the easy world's y⁻ far more per token (about 0.2 to 1.5 nats) than the hard world's (about −0.1 to 0.3): a
    short fact is quick to learn, a random tail is not. Lifting y⁻ out of its valley is only the first link of the
    mechanism; whether it turns into more wins is what the lesson's table says."""
    n = make_batch(tok, prompts, rejected, extend.config.block_size).mask.sum(1)  # (B,) y⁻'s tokens, EOS included
    lift = response_logprobs(extend, tok, prompts, rejected) - response_logprobs(baseline, tok, prompts, rejected)
    return lift.double() / n  # (B,)


def first_step_size(model, tok, pairs, optimizer, lr, beta):
    """At the first step the margin is 0, so ∇L = −(β/2)·mean(g⁺ − g⁻) with g± = ∇θ log π(y±|x). SGD's step is
    lr·(β/2)·‖mean(g⁺ − g⁻)‖: exactly five times longer at β = 0.5 than at β = 0.1. AdamW's first step divides each
    coordinate's gradient by its own size (m̂/√v̂ = g/|g| up to ε), so every parameter with a non-zero gradient
    moves by lr, whatever β: ‖Δθ‖ ≈ lr·√(their number), about 0.33 for this model at lr 1e-3, some twenty times
    SGD's step at lr 1e-2 and β 0.1. With SGD, β(1 − a) sets how far DPO moves the model; with AdamW it only sets
    the direction. The verdicts compare how far y⁻, y⁺ and y* move, so they can change with the optimizer (and
    the optimizer runs both stages: it changes the SFT models too)."""
    model = copy.deepcopy(model)  # the caller's model stays as it was
    theta0 = [p.detach().clone() for p in model.parameters()]
    prompts = [p.prompt for p in pairs]
    bc = make_batch(tok, prompts, [p.chosen for p in pairs], model.config.block_size)
    br = make_batch(tok, prompts, [p.rejected for p in pairs], model.config.block_size)

    def logp(b):  # (B,) log π(y|x), summed over each response
        return sequence_logprob(model(b.idx), b.targets)

    with torch.no_grad():
        ref_c, ref_r = logp(bc), logp(br)  # the reference: the model before the step
    params = list(model.parameters())
    opt = (torch.optim.SGD(params, lr=lr) if optimizer == "sgd" else
           torch.optim.AdamW(params, lr=lr, weight_decay=0.0))
    dpo_loss(logp(bc), logp(br), ref_c, ref_r, beta).backward()  # a mean over the pairs
    opt.step()
    return torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(params, theta0))).item()


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"sign_test": lambda wins, losses: sum(math.comb(wins + losses, i) for i in range(min(wins, losses) + 1))
         / 2 ** (wins + losses)},
     "off by"),  # one-sided: only the tail on the side that was seen
    (2, {"rejected_lift": lambda extend, baseline, tok, prompts, rejected:
         response_logprobs(extend, tok, prompts, rejected) - response_logprobs(baseline, tok, prompts, rejected)},
     "off by"),  # the lift of the whole sequence, not per token
    (3, {"first_step_size": lambda model, tok, pairs, optimizer, lr, beta:
         first_step_size(model, tok, pairs, optimizer, lr, beta) ** 2},
     "off by"),  # the squared distance
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("10_extend"), sys.modules[__name__])) else 1)
