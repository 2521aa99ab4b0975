"""Exercises of lesson 9 — what off-policy DPO does to every answer.

Each exercise asks for the quantity behind one of the lesson's questions, measured on the model DPO starts from:
seed 0's SFT model, made as the lesson makes it (the cached base model, then the SFT stage; fast mode with
``TINYLD_FAST=1``). Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    TINYLD_FAST=1 python lessons/exercises/09_dpo_dynamics.py

Each answer is checked against an independent computation: the library's per-sequence measurements
(``tinyld.probes.position_stats``, in float64) and its Trainer (plain SGD, float64). A failed check prints a hint.
Worked solutions: ``lessons/solutions/09_dpo_dynamics.py``.
"""
import copy
import functools
import os
import sys
from pathlib import Path

import torch

from tinyld.data import Example, make_batch
from tinyld.evaluate import response_logprobs
from tinyld.experiments.dpo_dynamics import DPODynamicsConfig, base, on_policy_pairs, sft, sft_steps
from tinyld.preference import PreferenceData, Reference
from tinyld.probes import position_stats
from tinyld.train import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402

FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")  # as in the lesson, read when this file is loaded
CFG = DPODynamicsConfig(seeds=[0], modes=["hard"], fast=FAST)  # the lesson's settings
N_PAIRS = 8  # the first training pairs of seed 0's world
LR, BETA, STEPS = 1e-2, 0.1, 5  # exercise 2: plain SGD, the lesson's β, a few steps


def star_gap(model, tok, prompts: list[str], chosen: list[str]) -> torch.Tensor:
    """Exercise 1: log π(y*|x) − log π(y⁺|x) for each prompt, shape (B,), in nats. y* is the teacher-forced argmax
    along y⁺: at every position of y⁺ (EOS included), the token the model finds most likely after the prompt and
    y⁺'s earlier tokens. Both log-probs are summed over those positions."""
    raise NotImplementedError


def sgd_chosen_curve(model, tok, pairs: list[Example], lr: float, beta: float, steps: int) -> torch.Tensor:
    """Exercise 2: take ``steps`` plain-SGD steps θ ← θ − lr·∇L on a copy of ``model``, each on all the ``pairs`` at
    once, with the DPO loss L = mean over the pairs of −log σ(β·margin), margin = (log π(y⁺|x) − log π_ref(y⁺|x)) −
    (log π(y⁻|x) − log π_ref(y⁻|x)), and the model before the first step as the reference π_ref. Return, after each
    step, the mean over the pairs of log π(y⁺|x) minus its value before the first step: shape (steps,). Leave
    ``model`` itself unchanged."""
    raise NotImplementedError


def rejected_per_token(model, tok, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """Exercise 3: log π(y|x) / |y| for each response, shape (B,): its summed log-prob divided by its number of
    tokens, EOS included. How deep the response sits, per token (the lesson's "valley/token" is this, for random
    token sequences)."""
    raise NotImplementedError


@functools.cache
def sft_model(mode: str):
    """(model, tokenizer, world): seed 0's SFT model in the world ``mode``, the model the lesson starts DPO from."""
    model, tok, world = base(CFG, 0, mode)
    items = world.train_items()
    return sft(CFG, 0, model, tok, [it.example() for it in items], sft_steps(CFG, len(items))), tok, world


@functools.cache
def sft_model64():
    """The hard world's SFT model in float64, and the first training pairs."""
    model, tok, world = sft_model("hard")
    return copy.deepcopy(model).double(), tok, [it.example() for it in world.train_items()[:N_PAIRS]]


@functools.cache
def on_policy_rejected():
    """(prompts, y⁻): answers sampled from the SFT model and judged wrong by the oracle, as in a round of on-policy
    DPO, for the first training prompts."""
    model, tok, world = sft_model("hard")
    pairs = on_policy_pairs(model, tok, world, world.train_items()[:N_PAIRS], CFG.samples, 0)
    return [p.prompt for p in pairs], [p.rejected for p in pairs]


def stats(model, tok, prompts, responses) -> dict:
    """position_stats of the responses in float64: logp, logp_star, tokens (B,) each."""
    b = make_batch(tok, prompts, responses, model.config.block_size)
    with torch.no_grad():
        return position_stats(model.eval()(b.idx).double(), b.targets)


@functools.cache
def trainer_curve() -> torch.Tensor:
    """The same steps through the library: the Trainer (plain SGD, DPO loss, no clipping) on the same pairs, with
    the mean log π(y⁺|x) measured after every step by ``response_logprobs``."""
    m64, tok, pairs = sft_model64()
    model = copy.deepcopy(m64)
    prompts, chosen = [p.prompt for p in pairs], [p.chosen for p in pairs]
    before = response_logprobs(model, tok, prompts, chosen).mean()
    data = PreferenceData(tok, pairs, len(pairs), model.config.block_size, 0, Reference.compute(model, tok, pairs))
    tc = TrainConfig(task="dpo", steps=STEPS, optimizer="sgd", lr=LR, grad_clip=0.0, progress=False,
                     log_every=STEPS, pair_loss={"name": "sigmoid", "beta": BETA})
    curve = []
    Trainer(model, data, tc, tok).run(lambda tr, step: curve.append(
        response_logprobs(tr.model, tok, prompts, chosen).mean() - before))
    return torch.stack(curve)


@exercise(1, "how far y* is from y⁺ before DPO", "make_batch(tok, prompts, chosen, block_size) gives the targets and "
          "the mask of y⁺'s positions; y*'s log-prob at a position is the largest entry of the log-softmax there, "
          "y⁺'s is the entry at its target; sum each over the masked positions")
def check_star_gap(answers):
    for mode in ("hard", "easy"):
        model, tok, world = sft_model(mode)
        items = world.train_items()[:N_PAIRS]
        prompts, chosen = [it.prompt for it in items], [it.chosen for it in items]
        got = answers.star_gap(model, tok, prompts, chosen)
        st = stats(model, tok, prompts, chosen)
        problem = compare(got, st["logp_star"] - st["logp"], 1e-3,
                          "float32 logits: sums of a few dozen log-probs agree to about 1e-5")
        if problem:
            return f"{mode} world, the first {N_PAIRS} training prompts: {problem}"


@exercise(2, "y⁺ in the first steps of plain-SGD DPO", "compute the reference log-probs once, before any step "
          "(sequence_logprob of the model's logits, no gradient); each step: loss = tinyld.losses.dpo_loss(…) on the "
          "summed log-probs of all the pairs, gradient, θ ← θ − lr·grad; then record the mean log π(y⁺|x) minus its "
          "value before the first step")
def check_sgd_curve(answers):
    m64, tok, pairs = sft_model64()
    got = answers.sgd_chosen_curve(copy.deepcopy(m64), tok, pairs, LR, BETA, STEPS)
    problem = compare(got, trainer_curve(), 1e-9, "float64: the two routes differ only in rounding")
    if problem:
        return f"the hard world's first {N_PAIRS} pairs, lr {LR:g}, β {BETA:g}, {STEPS} steps: {problem}"


@exercise(3, "how deep y⁻ sits: the world's and a sampled one", "log π(y|x) is summed over the response tokens, EOS "
          "included (tinyld.evaluate.response_logprobs); the mask of make_batch marks the same tokens: count them")
def check_per_token(answers):
    model, tok, world = sft_model("hard")
    items = world.train_items()[:N_PAIRS]
    world_rejected = [it.prompt for it in items], [it.rejected for it in items]
    for name, (prompts, responses) in (("the world's y⁻", world_rejected), ("sampled y⁻", on_policy_rejected())):
        got = answers.rejected_per_token(model, tok, prompts, responses)
        st = stats(model, tok, prompts, responses)
        problem = compare(got, st["logp"] / st["tokens"], 1e-4,
                          "float32 logits: per-token means agree to about 1e-6")
        if problem:
            return f"{name}, the hard world's first {N_PAIRS} training prompts: {problem}"


CHECKS = [check_star_gap, check_sgd_curve, check_per_token]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
