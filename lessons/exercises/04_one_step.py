"""Exercises of lesson 4 — one step, predicted vs actual.

Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    TINYLD_FAST=1 python lessons/exercises/04_one_step.py    # on the fast-mode models, as in the lab

Each answer is checked against an independent computation in float64: the losses written out with PyTorch's
cross-entropy, their gradients by autograd, the step taken by hand on a copy of the weights, and the first-order
change as the derivative along the step by reverse-mode autograd (no residual G, no forward-mode JVP). A failed
check prints a hint. The checks use the lesson's pretrained model (``pretrained(seed=0, steps=400)`` with
TINYLD_FAST=1, else 3000 steps), its prompt ``item = world.train_items()[0]`` and the twelve probe families as
observed rows ``ro``. Worked solutions: ``lessons/solutions/04_one_step.py``.
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from tinyld.data import make_batch
from tinyld.evaluate import response_logprobs
from tinyld.updates import DPOUpdate, SFTUpdate, lm_rows

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, lesson_model, run_checks  # noqa: E402

IGNORE = -100  # a target that is not scored (the prompt's positions)


def relative_error(model, update, ro, target: float) -> float:
    """Exercise 1: take one SGD step on ``update`` with the η at which no observed sequence of ``ro`` is predicted to
    move by more than ``target`` nats, and return the relative error of the prediction on the sequences,
    ‖pred − actual‖ / ‖actual‖ over the (n_seq,) changes of log π(y|x). Predict first: how does it change from
    target 0.1 to 0.4? (The error is O(η²), the change O(η).)"""
    raise NotImplementedError


def dpo_per_position(model, dpo, ro, eta: float, seq: int) -> torch.Tensor:
    """Exercise 2: the predicted change of log π at each token of observed sequence ``seq`` (its response tokens and
    EOS, in order: shape (M,)) after one SGD step of size ``eta`` on the DPO update ``dpo``. Predict first: at
    which position of y⁻ is it largest in absolute value?"""
    raise NotImplementedError


def wrong_answer_change(model, tok, item, eta: float) -> float:
    """Exercise 3: train on the wrong answer: one plain SGD step of size ``eta`` on SFT of (item.prompt,
    item.rejected). Return the *actual* change of log π(item.chosen | item.prompt), summed over its tokens.
    Predict its sign first."""
    raise NotImplementedError


_cache = {}


def setup():
    """The lesson's objects, cached: model (float64), tokenizer, item, probe names, observed rows and batch, the
    SFT update on y⁺ and the DPO update (β = 0.1, the model as its own reference)."""
    if "setup" not in _cache:
        world, tok, model = lesson_model()
        model = model.double().eval()  # fast mode is read here, when a check runs, as the lessons read it
        item = world.train_items()[0]
        probes = world.probes(item)
        names = list(probes)
        obs = make_batch(tok, [item.prompt] * len(names), [probes[n] for n in names])  # (12, T)
        rows_c = lm_rows(make_batch(tok, [item.prompt], [item.chosen]))
        rows_r = lm_rows(make_batch(tok, [item.prompt], [item.rejected]))
        dpo = DPOUpdate(rows_c, rows_r, response_logprobs(model, tok, [item.prompt], [item.chosen]),
                        response_logprobs(model, tok, [item.prompt], [item.rejected]), beta=0.1)
        _cache["setup"] = dict(model=model, tok=tok, item=item, names=names, obs=obs, ro=lm_rows(obs),
                               sft=SFTUpdate(rows_c), dpo=dpo)
    return _cache["setup"]


# ---- the reference: plain PyTorch on a dict of weights ----------------------------------------------------------


def token_logps(model, params: dict, batch) -> torch.Tensor:
    """log π of each scored target, 0 elsewhere: (B, T)."""
    logits = functional_call(model, params, (batch.idx,))  # (B, T, V)
    return -F.cross_entropy(logits.transpose(1, 2), batch.targets, ignore_index=IGNORE, reduction="none")


def sgd_direction(model, loss_of) -> dict:
    """−∇L by autograd for the loss ``loss_of(params)``: the direction of a plain SGD step."""
    params = {k: p.detach().requires_grad_() for k, p in model.named_parameters()}
    grads = torch.autograd.grad(loss_of(params), list(params.values()))
    return {k: -g for k, g in zip(params, grads)}


def weights(model) -> dict:
    return {k: p.detach() for k, p in model.named_parameters()}


def moved(model, direction: dict, eps: float) -> dict:
    return {k: p.detach() + eps * direction[k] for k, p in model.named_parameters()}


def slope(model, direction: dict, batch) -> torch.Tensor:
    """d/dε of each token's log π at θ + ε·direction, ε = 0: (B, T). Reverse-mode autograd, by the double-backward
    trick of torch.autograd.functional.jvp (tinyld's route is forward-mode)."""
    names = list(direction)
    theta = tuple(weights(model)[k] for k in names)
    return torch.autograd.functional.jvp(lambda *ps: token_logps(model, dict(zip(names, ps)), batch), theta,
                                         tuple(direction[k] for k in names))[1]


def sft_loss(model, tok, prompt: str, response: str):
    """The SFT loss −log π(response | prompt) as a function of the weights."""
    b = make_batch(tok, [prompt], [response])
    return lambda params: -token_logps(model, params, b).sum()


def lesson_eta() -> float:
    """The lesson's η: no observed sequence moves by more than 0.1 nats to first order under SFT on y⁺."""
    s = setup()
    if "eta" not in _cache:
        d = sgd_direction(s["model"], sft_loss(s["model"], s["tok"], s["item"].prompt, s["item"].chosen))
        per_eta = slope(s["model"], d, s["obs"]).sum(1)  # (12,) Δ log π(y|x) per unit η, to first order
        _cache.update(sft_direction=d, per_eta=per_eta, eta=0.1 / per_eta.abs().max().item())
    return _cache["eta"]


# ---- the checks -------------------------------------------------------------------------------------------------


@exercise(1, "step size and error", "step_size_for gives the η for a target; one_step takes the step and reports "
          "its relative errors: full vocabulary, tokens and sequences. Which one is about the sequences?")
def check_error(answers):
    s = setup()
    got = {target: answers.relative_error(s["model"], s["sft"], s["ro"], target) for target in (0.1, 0.4)}
    lesson_eta()
    d, per_eta, model, obs = _cache["sft_direction"], _cache["per_eta"], s["model"], s["obs"]
    before = token_logps(model, weights(model), obs).sum(1)  # (12,)
    for target in (0.1, 0.4):
        eta = target / per_eta.abs().max().item()
        pred, actual = eta * per_eta, token_logps(model, moved(model, d, eta), obs).sum(1) - before
        want = ((pred - actual).norm() / actual.norm()).item()
        problem = compare(got[target], want, 1e-8 * want, "float64, another route: 8 digits of a relative error")
        if problem:
            return f"target {target}: {problem}"


@exercise(2, "where does DPO push?", "the StepReport of one_step splits a sequence's predicted change into its "
          "positions (per_position); which sequence does it split?")
def check_dpo(answers):
    s = setup()
    seq = s["names"].index("rejected")
    eta = 10 * lesson_eta()  # the lesson's DPO step: β/2 makes DPO's gradient 20× smaller than SFT's
    got = answers.dpo_per_position(s["model"], s["dpo"], s["ro"], eta, seq)
    if "dpo" not in _cache:
        model, tok, item = s["model"], s["tok"], s["item"]
        bc, br = make_batch(tok, [item.prompt], [item.chosen]), make_batch(tok, [item.prompt], [item.rejected])
        ref_c, ref_r = (token_logps(model, weights(model), b).sum() for b in (bc, br))  # the model is its reference

        def dpo_loss(params):
            margin = (token_logps(model, params, bc).sum() - ref_c) - (token_logps(model, params, br).sum() - ref_r)
            return -F.logsigmoid(0.1 * margin)

        per_token = eta * slope(model, sgd_direction(model, dpo_loss), s["obs"])  # (12, T)
        _cache["dpo"] = per_token[seq][s["obs"].targets[seq] != IGNORE]  # (M,) in position order
    want = _cache["dpo"]
    return compare(got, want, 1e-9 * want.abs().max().item(), "float64 rounding, relative to the largest change")


@exercise(3, "SFT on the wrong answer", "an update on (x, y⁻) is SFTUpdate on the rows of make_batch(tok, [x], [y⁻]); "
          "observe y⁺ with rows of its own, and read the actual change, not the prediction")
def check_wrong(answers):
    s = setup()
    model, tok, item, eta = s["model"], s["tok"], s["item"], lesson_eta()
    got = answers.wrong_answer_change(model, tok, item, eta)
    if "wrong" not in _cache:
        d = sgd_direction(model, sft_loss(model, tok, item.prompt, item.rejected))
        bc = make_batch(tok, [item.prompt], [item.chosen])
        _cache["wrong"] = (token_logps(model, moved(model, d, eta), bc) - token_logps(model, weights(model), bc)).sum()
    return compare(got, _cache["wrong"], 1e-10, "the same float64 step, its gradient summed in another order")


CHECKS = [check_error, check_dpo, check_wrong]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
