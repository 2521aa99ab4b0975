"""Exercises of lesson 6 — what SFT does to every other answer.

Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    TINYLD_FAST=1 python lessons/exercises/06_sft_dynamics.py    # on the fast-mode models, as in the lab

Each answer is checked on the lesson's hard-mode base model of seed 0 (as the lesson's ``setup`` makes it, here in
float64), before and after one plain-SGD step on the first batch of the SFT runs, against an independent
computation: the probe ``Tracker`` (exercise 1) and the token log-probs of one padded batch (exercises 2 and 3). A
failed check prints a hint. Worked solutions: ``lessons/solutions/06_sft_dynamics.py``.
"""
import copy
import sys
from pathlib import Path

import torch

from tinyld.data import PairData, make_batch
from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, setup
from tinyld.losses import sft_loss, token_logprobs
from tinyld.probes import ProbeSet, Tracker
from tinyld.runtime import fast_mode
from tinyld.updates import lm_rows

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402


def family_means(model, tok, probes: ProbeSet) -> torch.Tensor:
    """Exercise 1: the mean over the training prompts (split "train") of log π(y|x_u) for every family of
    ``probes.families``, in that order (y* last), shape (F,): the numbers the claims table is judged on.
    log π(y|x_u) is summed over y's tokens and the EOS that ends it; a family that some prompts lack (y_init can be
    missing) is averaged over the prompts that have it. For y*: Σ_m log max_v π(v | x_u, y⁺_<m) along y⁺."""
    raise NotImplementedError


def token_changes(before, after, tok, prompt: str, response: str) -> torch.Tensor:
    """Exercise 2: the change of log π(y_m | x, y_<m) from the model ``before`` to the model ``after`` at every
    token of the response y (its words, then EOS), shape (M,). They add up to the change of log π(y|x)."""
    raise NotImplementedError


def end_after_fact(model, tok, probes: ProbeSet) -> torch.Tensor:
    """Exercise 3: log π(EOS | x_u, f_u) for each training prompt (split "train", in order), shape (n,): how likely
    the answer ends right after f_u, the first sentence of y_u⁺ (its words up to and including the first ".")."""
    raise NotImplementedError


LR = 1e-4  # the plain-SGD step of the checks (lesson 6's one-step measurement uses the same)
_MADE = {}


def lesson_models():
    """(before, after, tok, probes, probe): the lesson's hard-mode base model of seed 0 with its probes (the
    lesson's config and ``setup``, so the cached model is shared), in float64, and a copy after one plain-SGD step
    of lr ``LR`` on the first batch of the lesson's SFT runs; ``probe``: the training probe of that batch's first
    example. Made once (per fast or full mode)."""
    fast = fast_mode()  # TINYLD_FAST, read when the check runs
    if fast not in _MADE:
        seeds = [0, 1] if fast else [0, 1, 2]
        cfg = SFTDynamicsConfig(seeds=seeds, epochs=20, pretrain_steps=3000, fast=fast, attribution=False)
        model, tok, probes, _ = setup(cfg, 0, "hard")
        before = copy.deepcopy(model).double().eval()
        data = PairData(tok, probes.examples("train"), cfg.batch_size, model.config.block_size, seed=0)
        batch = data.batch(0)
        after = copy.deepcopy(before)
        grads = torch.autograd.grad(sft_loss(after(batch.idx), batch.targets), list(after.parameters()))
        with torch.no_grad():
            for p, g in zip(after.parameters(), grads):
                p.sub_(LR * g)
        _MADE[fast] = (before, after, tok, probes, probes.split("train")[data.indices(0)[0]])
    return _MADE[fast]


def worst(problem: str, got, want, names: list[str]) -> str:
    """The problem, with the entry where ``got`` is furthest from ``want`` named."""
    got = torch.as_tensor(got, dtype=torch.float64)
    return f"{problem}; furthest at {names[int((got - want).abs().argmax())]}"


@exercise(1, "the family means the claims are judged on", "log π(y|x_u) is summed over y's tokens and its EOS "
          "(response_logprobs gives it); average over the training prompts only; for y*, take the largest log π at "
          "each position of y⁺ instead of y⁺'s own token")
def check_means(answers):
    before, after, tok, probes, _ = lesson_models()
    few = ProbeSet(probes.split("train")[:4] + probes.split("test")[:2])  # held-out prompts too: not averaged
    for name, model in (("the base model", before), (f"after one SGD step (lr {LR:g})", after)):
        got = answers.family_means(model, tok, few)
        key = (fast_mode(), "means", name)
        if key not in _MADE:  # the reference does not depend on the answer: measured once
            tracker = Tracker(tok, few, valley=False)
            tracker.measure(model, 0)
            _MADE[key] = torch.tensor([tracker.curve(f, "train")[1][0] for f in few.families], dtype=torch.float64)
        want = _MADE[key]
        problem = compare(got, want, 1e-9, "float64 throughout: padding a batch differently changes only rounding")
        if problem:
            return f"{name}: " + (worst(problem, got, want, few.families) if "off by" in problem else problem)


@exercise(2, "the change at every token", "teacher forcing: the logits at the position before each token of y give "
          "its log π (log_softmax, then pick y's token); y ends with EOS; after minus before")
def check_tokens(answers):
    before, after, tok, _, probe = lesson_models()  # a probe whose own example the step trained on
    chosen = probe.responses["chosen"]
    responses = {"y⁺": chosen, "first": " ".join(chosen.split()[:1] + probe.responses["hum"].split())}
    if "init" in probe.responses:
        responses["y_init"] = probe.responses["init"]
    got = {k: answers.token_changes(before, after, tok, probe.prompt, r) for k, r in responses.items()}
    rows = lm_rows(make_batch(tok, [probe.prompt] * len(responses), list(responses.values())))
    with torch.no_grad():
        change = token_logprobs(rows.logits(after), rows.labels) - token_logprobs(rows.logits(before), rows.labels)
    for g, (k, r) in enumerate(responses.items()):
        problem = compare(got[k], change[rows.group == g], 1e-9, "float64: the same log-probs, computed apart")
        if problem:
            return f"{k} = {r!r}: {problem}"


@exercise(3, "the end of the answer after the fact", "f_u is y_u⁺'s words up to and including the first '.'; "
          "score f_u as a response (EOS follows it) and read log π at the EOS")
def check_end(answers):
    before, after, tok, probes, _ = lesson_models()
    got = {name: answers.end_after_fact(m, tok, probes) for name, m in (("the base model", before),
                                                                          (f"after one SGD step (lr {LR:g})", after))}
    train = probes.split("train")
    facts = [p.responses["chosen"][: p.responses["chosen"].index(" .") + 2] for p in train]  # up to the first " ."
    b = make_batch(tok, [p.prompt for p in train], facts)
    for (name, g), m in zip(got.items(), (before, after)):
        with torch.no_grad():
            want = token_logprobs(m(b.idx), b.targets)[b.targets == tok.eos_id]  # (n,): one EOS per row
        problem = compare(g, want, 1e-9, "float64: the same log-probs, computed apart")
        if problem:
            return f"{name}: {problem}"


CHECKS = [check_means, check_tokens, check_end]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
