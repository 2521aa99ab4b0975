"""Worked solutions to the exercises of lesson 12 — which preference pairs make DPO lower y⁺? CHES.

Run this file to see them pass the same checks as your answers: ``TINYLD_FAST=1 python lessons/solutions/12_ches.py``.
"""
import copy
import sys
from pathlib import Path

import torch

from tinyld.data import make_batch
from tinyld.losses import dpo_loss, sequence_logprob

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def logp(model, tok, prompt, response):
    """log π(y|x), summed over the response's tokens (EOS included), with the graph for autograd."""
    b = make_batch(tok, [prompt], [response], model.config.block_size)
    return sequence_logprob(model(b.idx), b.targets)[0]


def grads(model, tok, pair):
    """g⁺ and g⁻: ∇θ log π(y±|x) over every parameter, flattened into one vector each (P,)."""
    params = list(model.parameters())
    return [torch.cat([g.flatten() for g in torch.autograd.grad(logp(model, tok, pair.prompt, y), params)])
            for y in (pair.chosen, pair.rejected)]


def sgd_change(model, tok, pair, lr, steps, beta):
    """The lesson's derivation, step after step: at the first step the margin is 0 and the step is
    lr·(β/2)·(g⁺ − g⁻), so log π(y⁺) moves by about lr·(β/2)·(‖g⁺‖² − ⟨g⁺, g⁻⟩). SGD follows the gradient, so the
    first step goes the way the derivation says. Five steps are not one, though: in fast mode, for the easy
    world's first prompt against its rephrased y⁻ (`gpts_rejected`) and against another prompt's answer
    (`other_chosen`), the first step raises log π(y⁺), as their negative gradient scores say, and the later steps
    lower it below its start. Rerunning the lesson's pairs this way gives the AUCs under SGD to compare with
    AdamW's."""
    model = copy.deepcopy(model)  # the caller's model stays the reference
    with torch.no_grad():
        ref_c, ref_r = logp(model, tok, pair.prompt, pair.chosen), logp(model, tok, pair.prompt, pair.rejected)
    params = list(model.parameters())
    for _ in range(steps):
        lc, lr_ = logp(model, tok, pair.prompt, pair.chosen), logp(model, tok, pair.prompt, pair.rejected)
        step = torch.autograd.grad(dpo_loss(lc[None], lr_[None], ref_c[None], ref_r[None], beta), params)
        with torch.no_grad():
            for p, g in zip(params, step):
                p -= lr * g
    with torch.no_grad():
        return (logp(model, tok, pair.prompt, pair.chosen) - ref_c).item()


def gradient_score(model, tok, pair):
    """⟨g⁺, g⁻⟩ − ‖g⁺‖² = ⟨g⁺, g⁻ − g⁺⟩: how far the push on y⁻ drags y⁺ along, minus how far the pull lifts it.
    Positive: to first order y⁺ falls. It needs every parameter's gradient for both responses; CHES replaces g±
    by the summed hidden states H± (one forward pass each), the output layer's share of these gradients without
    the softmax factors. Computing this score for every pair of the lesson and its AUC shows how much ranking
    is lost by that shortcut."""
    gp, gm = grads(model, tok, pair)
    return (gp @ gm - gp @ gp).item()


def displacement_ratio(model, tok, pair):
    """Δ log π(y⁺) ≈ η·(β/2)·‖g⁺‖²·(1 − ρ): y⁺ falls to first order exactly when ρ > 1, when g⁻ reaches past g⁺
    along g⁺'s own direction. In the hard world y⁺ ends in a long random tail that sits deep in a valley: many
    tokens, each far from likely, so ‖g⁺‖² is large. For the second prompt in fast mode ρ is about 0.26 against
    the world's y⁻ and below 0 against fluent unrelated text (`hum`), and it comes close to 1 only for
    `gptf_chosen`, which is y⁺ with another name and the same tail. So a small SGD step raises y⁺ for these
    kinds of y⁻; run the lesson's table in the hard world to see how the AdamW steps compare."""
    gp, gm = grads(model, tok, pair)
    return (gp @ gm / (gp @ gp)).item()


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"sgd_change": lambda model, tok, pair, lr, steps, beta: sgd_change(model, tok, pair, lr, steps, 1.0)},
     "off by"),  # β left out of the sigmoid: −log σ(margin) is the loss with β = 1, ten times the push and pull
    (2, {"gradient_score": lambda model, tok, pair: -gradient_score(model, tok, pair)},
     "off by"),  # ‖g⁺‖² − ⟨g⁺, g⁻⟩: the first-order change of log π(y⁺) (per unit η·β/2), not the score
    (3, {"displacement_ratio": lambda model, tok, pair: (lambda gp, gm: (gp @ gm / (gm @ gm)).item())(
        *grads(model, tok, pair))},
     "off by"),  # divided by ‖g⁻‖²: the projection of g⁺ onto g⁻, the other way round
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("12_ches"), sys.modules[__name__])) else 1)
