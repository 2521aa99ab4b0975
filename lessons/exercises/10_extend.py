"""Exercises of lesson 10 — the extend fix, and its honest effect size.

Each exercise asks for the quantity behind one of the lesson's questions. Exercises 2 and 3 measure it on the two
SFT models of seed 0, made as the lesson makes them (the cached base model, then SFT on y⁺ alone for the baseline
and on y⁺ and y⁻ for extend, the same number of steps; fast mode with ``TINYLD_FAST=1``). Fill in each function
below where it says ``raise NotImplementedError``, then run this file:

    TINYLD_FAST=1 python lessons/exercises/10_extend.py

Each answer is checked against an independent computation: the binomial distribution of ``torch.distributions``,
the library's per-sequence measurements (``tinyld.probes.position_stats``, in float64) and its Trainer (one DPO
step, float64). A failed check prints a hint. Worked solutions: ``lessons/solutions/10_extend.py``.
"""
import copy
import functools
import os
import sys
from pathlib import Path

import torch

from tinyld.data import Example, make_batch
from tinyld.experiments.dpo_dynamics import DPODynamicsConfig, base, sft, sft_steps
from tinyld.preference import PreferenceData, Reference
from tinyld.probes import position_stats
from tinyld.train import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402

FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")  # as in the lesson, read when this file is loaded
CFG = DPODynamicsConfig(seeds=[0], modes=["hard"], fast=FAST)  # the lesson's settings
N_PAIRS = 8  # the first training prompts of seed 0's world


def sign_test(wins: int, losses: int) -> float:
    """Exercise 1: how likely a count at least this lopsided is if extend and the baseline were equally good. With
    X ~ Binomial(wins + losses, ½) (each decided comparison a fair coin; ties left out), return the two-sided
    p-value min(1, 2·P(X ≤ min(wins, losses))). 1.0 when nothing was decided."""
    raise NotImplementedError


def rejected_lift(extend, baseline, tok, prompts: list[str], rejected: list[str]) -> torch.Tensor:
    """Exercise 2: how far extend's SFT lifts y⁻ above the baseline's SFT, per token, for each prompt: shape (B,),
    (log π_extend(y⁻|x) − log π_baseline(y⁻|x)) / |y⁻|, with the log-probs summed over y⁻'s tokens and |y⁻| the
    number of those tokens, EOS included."""
    raise NotImplementedError


def first_step_size(model, tok, pairs: list[Example], optimizer: str, lr: float, beta: float) -> float:
    """Exercise 3: ‖θ₁ − θ₀‖, how far the weights move (all parameters together, the Euclidean norm) in the first
    DPO step: one step on all the ``pairs`` at once, with the DPO loss (mean over the pairs of −log σ(β·margin),
    margin = (log π(y⁺|x) − log π_ref(y⁺|x)) − (log π(y⁻|x) − log π_ref(y⁻|x))), the model before the step as the
    reference π_ref and no gradient clipping. ``optimizer`` is "sgd"
    (``torch.optim.SGD(params, lr=lr)``) or "adamw" (``torch.optim.AdamW(params, lr=lr, weight_decay=0.0)``; the
    rest torch's defaults): the experiments' settings. Step a copy: leave ``model`` unchanged."""
    raise NotImplementedError


@functools.cache
def arms(mode: str):
    """(extend, baseline, tokenizer, world): seed 0's two SFT models in the world ``mode``, as the lesson builds
    them by hand (the same base model, seed and number of steps)."""
    model, tok, world = base(CFG, 0, mode)
    items = world.train_items()
    steps = sft_steps(CFG, len(items))
    extend = sft(CFG, 0, model, tok, [e for it in items for e in (it.example(), Example(it.prompt, it.rejected))],
                 steps)
    return extend, sft(CFG, 0, model, tok, [it.example() for it in items], steps), tok, world


@functools.cache
def dpo_start64():
    """The hard world's baseline SFT model in float64 (where the baseline's DPO starts), and the first pairs."""
    _, baseline, tok, world = arms("hard")
    return copy.deepcopy(baseline).double(), tok, [it.example() for it in world.train_items()[:N_PAIRS]]


@functools.cache
def trainer_step_size(optimizer: str, lr: float, beta: float) -> float:
    """The same step through the library: one step of the Trainer (DPO loss, no clipping, no weight decay)."""
    m64, tok, pairs = dpo_start64()
    model = copy.deepcopy(m64)
    data = PreferenceData(tok, pairs, len(pairs), model.config.block_size, 0, Reference.compute(model, tok, pairs))
    tc = TrainConfig(task="dpo", steps=1, optimizer=optimizer, lr=lr, grad_clip=0.0, progress=False, log_every=1,
                     pair_loss={"name": "sigmoid", "beta": beta})
    Trainer(model, data, tc, tok).run()
    return torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), m64.parameters()))).item()


# (wins, losses): counts like the lesson's in fast mode, a larger one (as 16 samples per prompt might give), edge cases
COUNTS = [(9, 11), (12, 10), (8, 10), (5, 7), (15, 3), (60, 35), (0, 6), (1, 0), (0, 0)]


@exercise(1, "is a win count more than noise? the sign test", "P(X = k) = C(n, k)/2ⁿ for n = wins + losses; add it "
          "up for k = 0 … min(wins, losses) and double it (the other tail is as likely), capped at 1")
def check_sign_test(answers):
    for wins, losses in COUNTS:
        got = answers.sign_test(wins, losses)
        n = wins + losses
        tail = torch.distributions.Binomial(n, torch.tensor(0.5, dtype=torch.float64)).log_prob(
            torch.arange(min(wins, losses) + 1, dtype=torch.float64)).exp().sum()
        problem = compare(got, torch.clamp(2 * tail, max=1.0), 1e-12, "exact to rounding in float64")
        if problem:
            return f"{wins} wins, {losses} losses: {problem}"


@exercise(2, "how far extend lifts y⁻, per token", "tinyld.evaluate.response_logprobs gives log π(y⁻|x) under each "
          "model, summed over y⁻'s tokens; divide the difference by the number of those tokens (the mask of "
          "make_batch counts them, EOS included)")
def check_lift(answers):
    for mode in ("hard", "easy"):
        extend, baseline, tok, world = arms(mode)
        items = world.train_items()[:N_PAIRS]
        prompts, rejected = [it.prompt for it in items], [it.rejected for it in items]
        got = answers.rejected_lift(extend, baseline, tok, prompts, rejected)
        b = make_batch(tok, prompts, rejected, extend.config.block_size)
        with torch.no_grad():
            ex, bl = (position_stats(m.eval()(b.idx).double(), b.targets) for m in (extend, baseline))
        problem = compare(got, (ex["logp"] - bl["logp"]) / ex["tokens"], 1e-4,
                          "float32 logits: per-token differences agree to about 1e-6")
        if problem:
            return f"{mode} world, the first {N_PAIRS} training prompts: {problem}"


@exercise(3, "how far the first DPO step moves the weights", "at the first step the margin is 0; after one "
          "loss.backward() and optimizer.step() on a copy, ‖θ₁ − θ₀‖ is the square root of the summed squared "
          "differences over every parameter")
def check_step_size(answers):
    m64, tok, pairs = dpo_start64()
    for optimizer, lr, beta in (("sgd", 1e-2, 0.1), ("adamw", 1e-3, 0.5)):
        got = answers.first_step_size(copy.deepcopy(m64), tok, pairs, optimizer, lr, beta)
        want = trainer_step_size(optimizer, lr, beta)
        problem = compare(got, want, 1e-6 * want, "float64: the two routes agree to rounding (relative 1e-6)")
        if problem:
            return f"{optimizer}, lr {lr:g}, β {beta:g}, the hard world's first {N_PAIRS} pairs: {problem}"


CHECKS = [check_sign_test, check_lift, check_step_size]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
