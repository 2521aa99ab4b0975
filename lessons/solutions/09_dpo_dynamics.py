"""Worked solutions to the exercises of lesson 9 — what off-policy DPO does to every answer.

Run this file to see them pass the same checks as your answers:
``TINYLD_FAST=1 python lessons/solutions/09_dpo_dynamics.py``.
"""
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyld.data import make_batch
from tinyld.evaluate import response_logprobs
from tinyld.losses import dpo_loss, sequence_logprob

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def log_softmax_along(model, tok, prompts, responses):
    """Teacher forcing: the log-softmax at every position (B, T, V) in float64, the targets (B, T) and the mask of
    the response positions (B, T), EOS included."""
    b = make_batch(tok, prompts, responses, model.config.block_size)
    with torch.no_grad():
        lp = F.log_softmax(model.eval()(b.idx).double(), -1)  # (B, T, V)
    return lp, b.targets, b.mask


def star_gap(model, tok, prompts, chosen):
    """At each position of y⁺ the argmax's log-prob is at least y⁺'s, so the gap is a sum of terms ≥ 0, and a term
    is 0 exactly where y⁺'s token is already the peak. In the hard world y⁺ ends in a random tail that the model
    cannot predict, so y* leaves y⁺ at many positions and the gap is many nats (about 6 to 17 for seed 0 in fast
    mode). In the easy world the SFT model predicts y⁺ token by token: for these prompts y* *is* y⁺ before DPO
    (a gap of exactly 0 in fast mode), so "y* rises while y⁺ falls" starts from two names for one sequence.
    For the valley, `regime(...)["valley_depth"]` is the log π per token of random token sequences."""
    lp, t, mask = log_softmax_along(model, tok, prompts, chosen)
    at_y = lp.gather(-1, t.clamp(min=0)[..., None])[..., 0]  # (B, T) log π of y⁺'s token
    top = lp.amax(-1)  # (B, T) log π of the argmax: y*'s token
    return ((top - at_y) * mask).sum(1)  # (B,)


def sgd_chosen_curve(model, tok, pairs, lr, beta, steps):
    """At the first step the policy is the reference: every margin is 0, a = ½ and every pair's weight is β/2, so
    the step is lr·(β/2)·mean(g⁺ − g⁻), with g± = ∇θ log π(y±|x). Plain SGD keeps that small factor: the steps are
    short, and each half acts as in the lesson's table of halves, the pull raising y⁺ and the push dragging it
    down with y⁻ (the two answers share their format). On the hard world's first 8 pairs in fast mode the pull
    wins at first: the mean log π(y⁺) rises for four steps, by less each time, and has begun to fall at the
    fifth, while y⁻ falls by about 2 nats. DPO's weight β(1 − a) has only dropped from 0.05 to about 0.045 by
    then, and it scales both halves alike: what turns y⁺ is the gradients at the new weights. Over a whole run the
    lesson's account applies: the pull on y⁺ fades as y⁺'s tokens become likely, the push on y⁻ does not (1 − π
    stays near 1 as y⁻ sinks). AdamW divides each coordinate by its own gradient scale, so β/2 no longer sets the
    step length (exercise 3 of lesson 10 measures this)."""
    model = copy.deepcopy(model)  # the caller's model stays the reference
    prompts = [p.prompt for p in pairs]
    bc = make_batch(tok, prompts, [p.chosen for p in pairs], model.config.block_size)
    br = make_batch(tok, prompts, [p.rejected for p in pairs], model.config.block_size)

    def logp(b):  # (B,) log π(y|x), summed over each response
        return sequence_logprob(model(b.idx), b.targets)

    with torch.no_grad():
        ref_c, ref_r = logp(bc), logp(br)  # the reference: the model before the first step
    params = list(model.parameters())
    curve, lc = [], logp(bc)
    for _ in range(steps):
        grads = torch.autograd.grad(dpo_loss(lc, logp(br), ref_c, ref_r, beta), params)  # the loss: a mean over pairs
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
        lc = logp(bc)  # after the step: recorded, and reused by the next step's loss
        curve.append((lc.detach() - ref_c).mean())
    return torch.stack(curve)  # (steps,)


def rejected_per_token(model, tok, prompts, responses):
    """log π(y|x) is a sum over tokens, so long answers sit lower only for being long; per token, answers of any
    length compare. The world's y⁻ was written for the model, not by it: under the SFT model it sits around −2
    nats per token in the hard world, while an answer the model samples itself (and the oracle judges wrong) sits
    higher, between about −0.6 and −2 in fast mode. Lesson 8 says why that matters: a push on a token deep in a
    valley sends its mass to the peak (squeezing), a push near the peak spreads it. On-policy DPO pushes on the
    second kind; the tracker keeps measuring the first kind, which on-policy DPO never pushes on."""
    lp, t, mask = log_softmax_along(model, tok, prompts, responses)
    at_y = lp.gather(-1, t.clamp(min=0)[..., None])[..., 0]  # (B, T)
    return (at_y * mask).sum(1) / mask.sum(1)  # (B,) the mask counts the response's tokens, EOS included


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"star_gap": lambda model, tok, prompts, chosen: star_gap(model, tok, prompts, chosen)
         / log_softmax_along(model, tok, prompts, chosen)[2].sum(1)},
     "off by"),  # a mean over the positions: the gap per token, not the gap between the two sequences
    (2, {"sgd_chosen_curve": lambda model, tok, pairs, lr, beta, steps:
         sgd_chosen_curve(model, tok, pairs, lr * len(pairs), beta, steps)},
     "off by"),  # the loss summed over the pairs, not averaged: with plain SGD every step is len(pairs) times longer
    (3, {"rejected_per_token": lambda model, tok, prompts, responses: response_logprobs(model, tok, prompts, responses)
         / torch.tensor([len(r.split()) for r in responses])},
     "off by"),  # divided by the number of words: EOS is a token too
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("09_dpo_dynamics"), sys.modules[__name__])) else 1)
