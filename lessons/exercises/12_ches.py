"""Exercises of lesson 12 — which preference pairs make DPO lower y⁺? CHES.

Each exercise asks for the quantity behind one of the lesson's questions, for one pair (x, y⁺, y⁻) at a time, on the
lesson's model: seed 0's SFT model (the cached base model, then the SFT stage; fast mode with ``TINYLD_FAST=1``) of
the easy world, and of the hard world for exercise 3, in float64 as in the lesson's derivation. Fill in each
function below where it says ``raise NotImplementedError``, then run this file:

    TINYLD_FAST=1 python lessons/exercises/12_ches.py

Each answer is checked against an independent computation: the library's ``dpo_change`` (the Trainer, plain SGD)
and the dynamics engine's first-order prediction of Δ log π(y⁺) (one JVP through the hand-derived residuals G,
``tinyld.kernel.predict``), in float64. A failed check prints a hint. Worked solutions:
``lessons/solutions/12_ches.py``.
"""
import copy
import functools
import os
import sys
from pathlib import Path

import torch

from tinyld.data import Example, make_batch
from tinyld.dynamics import sequence_change
from tinyld.experiments.dpo_dynamics import DPODynamicsConfig, base, sft, sft_steps
from tinyld.experiments.forecasting import ForecastConfig, dpo_change
from tinyld.kernel import predict
from tinyld.losses import sequence_logprob
from tinyld.updates import DPOUpdate, SFTUpdate, lm_rows

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402

FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")  # as in the lesson, read when this file is loaded
DCFG = DPODynamicsConfig(seeds=[0], modes=["easy"], fast=FAST)  # the lesson's SFT stage
LR, STEPS, BETA = 1e-2, 5, 0.1  # exercise 1: the lesson's 5 steps and β, plain SGD at lr 1e-2


def sgd_change(model, tok, pair: Example, lr: float, steps: int, beta: float) -> float:
    """Exercise 1: the change of log π(y⁺|x) after ``steps`` plain-SGD steps θ ← θ − lr·∇L on this pair alone, with
    the DPO loss L = −log σ(β·margin), margin = (log π(y⁺|x) − log π_ref(y⁺|x)) − (log π(y⁻|x) − log π_ref(y⁻|x)),
    and the model before the first step as the reference π_ref. Step a copy: leave ``model`` unchanged."""
    raise NotImplementedError


def gradient_score(model, tok, pair: Example) -> float:
    """Exercise 2: the gradient score ⟨g⁺, g⁻⟩ − ‖g⁺‖² of the pair, with g± = ∇θ log π(y±|x) over every parameter
    (log π summed over the response's tokens, EOS included). One SGD step of DPO at margin 0 changes log π(y⁺) by
    about −η·(β/2)·(this score)."""
    raise NotImplementedError


def displacement_ratio(model, tok, pair: Example) -> float:
    """Exercise 3: ρ = ⟨g⁺, g⁻⟩ / ‖g⁺‖², the length of g⁻'s projection onto g⁺ in units of ‖g⁺‖. To first order
    one small SGD step of DPO lowers log π(y⁺) exactly when ρ > 1."""
    raise NotImplementedError


@functools.cache
def sft_model64(mode: str):
    """(model in float64, tokenizer, world): seed 0's SFT model in the world ``mode``, made as the lesson makes it."""
    model, tok, world = base(DCFG, 0, mode)
    items = world.train_items()
    model = sft(DCFG, 0, model, tok, [it.example() for it in items], sft_steps(DCFG, len(items)))
    return copy.deepcopy(model).double(), tok, world


def pairs(world, item: int, kinds: tuple[str, ...]) -> list[Example]:
    """The pairs of one training prompt: its y⁺ against each kind of y⁻ (families of ``world.probes``)."""
    it = world.train_items()[item]
    fam = world.probes(it)
    return [Example(it.prompt, it.chosen, fam[k], {"kind": k}) for k in kinds]


EASY = ("rejected", "gpts_rejected")  # exercises 1 and 2: the easy world's first prompt
HARD = ("rejected", "gptf_chosen")  # exercise 3: the hard world's second prompt


@functools.cache
def library_sgd_changes() -> tuple[float, ...]:
    """The lesson's ``dpo_change`` with plain SGD: the Trainer, on each pair alone."""
    model, tok, world = sft_model64("easy")
    cfg = ForecastConfig(ches_lr=LR, ches_steps=STEPS, ches_beta=BETA, fast=FAST)
    return tuple(dpo_change(cfg, model, tok, pairs(world, 0, EASY), seed=0, optimizer="sgd"))


@functools.cache
def predicted(mode: str, item: int, kinds: tuple[str, ...]) -> tuple[tuple[float, float], ...]:
    """For each pair, the dynamics engine's predicted Δ log π(y⁺|x) at η = 1 of one DPO step at margin 0 and of one
    SFT step on y⁺: (η·(β/2)·(‖g⁺‖² − ⟨g⁺, g⁻⟩), η·‖g⁺‖²), each from one JVP along the update's gradient."""
    model, tok, world = sft_model64(mode)
    out = []
    for p in pairs(world, item, kinds):
        bc, br = (make_batch(tok, [p.prompt], [y], model.config.block_size) for y in (p.chosen, p.rejected))
        with torch.no_grad():
            ref_c, ref_r = (sequence_logprob(model(b.idx), b.targets) for b in (bc, br))  # margin 0: π is π_ref
        observed = lm_rows(bc)
        dpo = DPOUpdate(lm_rows(bc), lm_rows(br), ref_c, ref_r, beta=BETA)
        out.append(tuple(sequence_change(observed, predict(model, observed, u, 1.0))[0].item()
                         for u in (dpo, SFTUpdate(lm_rows(bc)))))
    return tuple(out)


@exercise(1, "Δ log π(y⁺) under plain-SGD DPO on one pair", "compute the reference log-probs once, before any step; "
          "each step: loss = tinyld.losses.dpo_loss(…) of the pair's two summed log-probs, gradient, θ ← θ − lr·grad; "
          "then log π(y⁺|x) minus its value before the first step")
def check_sgd_change(answers):
    model, tok, world = sft_model64("easy")
    for k, pair in enumerate(pairs(world, 0, EASY)):
        got = answers.sgd_change(copy.deepcopy(model), tok, pair, LR, STEPS, BETA)
        problem = compare(got, library_sgd_changes()[k], 1e-8, "float64: the two routes differ only in rounding")
        if problem:
            return f"y⁻ of kind {pair.meta['kind']!r} (easy world, first prompt), lr {LR:g}, {STEPS} steps: {problem}"


@exercise(2, "the gradient score ⟨g⁺, g⁻⟩ − ‖g⁺‖²", "g± is the gradient of one summed log-prob, log π(y±|x), with "
          "respect to every parameter (torch.autograd.grad, then flatten and concatenate); then two dot products")
def check_gradient_score(answers):
    model, tok, world = sft_model64("easy")
    for k, pair in enumerate(pairs(world, 0, EASY)):
        got = answers.gradient_score(model, tok, pair)
        dpo, _ = predicted("easy", 0, EASY)[k]
        want = -2 * dpo / BETA  # Δ log π(y⁺) = (β/2)(‖g⁺‖² − ⟨g⁺, g⁻⟩) at η = 1
        problem = compare(got, want, 1e-7 * max(1.0, abs(want)), "float64: the same inner products by two routes "
                          "(two backward passes; one JVP) agree to a relative 1e-7")
        if problem:
            return f"y⁻ of kind {pair.meta['kind']!r} (easy world, first prompt): {problem}"


@exercise(3, "the ratio ρ = ⟨g⁺, g⁻⟩/‖g⁺‖² in the hard world", "the same two gradients as in exercise 2; divide by "
          "the squared length of g⁺, the gradient of the response whose log-prob is watched")
def check_ratio(answers):
    model, tok, world = sft_model64("hard")
    for k, pair in enumerate(pairs(world, 1, HARD)):
        got = answers.displacement_ratio(model, tok, pair)
        dpo, sft_ = predicted("hard", 1, HARD)[k]
        want = 1 - 2 * dpo / (BETA * sft_)  # ‖g⁺‖² = sft_, ⟨g⁺, g⁻⟩ = ‖g⁺‖² − 2·dpo/β
        problem = compare(got, want, 1e-7, "float64: the same inner products by two routes agree to about 1e-7")
        if problem:
            return f"y⁻ of kind {pair.meta['kind']!r} (hard world, second prompt): {problem}"


CHECKS = [check_sgd_change, check_gradient_score, check_ratio]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
