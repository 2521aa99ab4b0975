"""Exercises of lesson 7 — answer B to question A: the hallucination mechanism.

Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    TINYLD_FAST=1 python lessons/exercises/07_hallucination.py    # on the fast-mode models, as in the lab

Exercises 1 and 2 are checked on the lesson's base models of seed 0 (as the lesson's ``setup`` makes them, here in
float64), observing y_{j≠u}⁺ under x_u, against float64 central differences of log π(y|x) along the step and the
change after a real step. Exercise 3 is checked against a parse of the world's sentence templates, on hand-made
answers and on the greedy answers of the hard-mode model before and after a few plain-SGD steps. A failed check
prints a hint. Worked solutions: ``lessons/solutions/07_hallucination.py``.
"""
import copy
import re
import sys
from pathlib import Path

import torch

from tinyld.data import PairData, make_batch
from tinyld.evaluate import greedy_answers
from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, setup
from tinyld.losses import sft_loss
from tinyld.probes import position_stats
from tinyld.runtime import fast_mode
from tinyld.world import NAMES, RELATIONS

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402


def step_change(model, tok, prompt: str, response: str, batch, eta: float) -> torch.Tensor:
    """Exercise 1: one plain-SGD step θ → θ − η∇L on ``batch`` (a Batch; L is the SFT loss, the mean over its
    sequences of −log π(y⁺|x)). Return shape (2,): the first-order predicted change of log π(response|prompt),
    −η·⟨∇θ log π(response|prompt), ∇θ L⟩, and the actual change after the step. Leave ``model`` as it was."""
    raise NotImplementedError


def per_example(model, tok, prompt: str, response: str, batch, eta: float) -> torch.Tensor:
    """Exercise 2: the first-order predicted change of log π(response|prompt) due to each sequence of ``batch``, in
    one plain-SGD step of lr η on the whole batch (the loss of exercise 1), shape (B,). They add up to the batch's
    prediction."""
    raise NotImplementedError


SOURCES = (  # exercise 3's codes: where an answer's first sentence comes from
    "correct, or no fact of this world's training prompts",  # 0: classify says correct or other
    "another training prompt's fact, of the same relation",  # 1: other_question, another person
    "another training prompt's fact, of the same person",  # 2: other_question, another relation
    "another training prompt's fact, of neither",  # 3: other_question, another person and relation
    "a wrong value that a training fact of the relation has",  # 4: wrong_value, a value SFT trained on
    "a wrong value that no training fact of the relation has",  # 5: wrong_value, any other value
)


def answer_sources(world, items: list, answers: list[str]) -> torch.Tensor:
    """Exercise 3: one code per answer, an index into ``SOURCES``, shape (n,): where the first sentence of
    ``answers[k]``, an answer to ``items[k]`` (an Item of ``world``), comes from. The kinds are those of
    ``world.classify``; a training fact is the fact of a prompt of ``world.train_items()``, in either phrasing."""
    raise NotImplementedError


_MADE = {}


def lesson_setup(mode: str):
    """(float64 copy, tok, probes, world, cfg, model) of seed 0 in ``mode``: the lesson's config and ``setup`` (so
    the cached base model is shared); ``model`` is the float32 model as ``setup`` gives it. Made once per mode."""
    fast = fast_mode()  # TINYLD_FAST, read when the check runs
    if (fast, mode) not in _MADE:
        seeds = [0, 1] if fast else [0, 1, 2]
        cfg = SFTDynamicsConfig(seeds=seeds, modes=["hard"], epochs=20, pretrain_steps=3000, attr_prompts=4,
                                fast=fast)
        model, tok, probes, world = setup(cfg, 0, mode)
        _MADE[fast, mode] = (copy.deepcopy(model).use_fast(False).double().eval(), tok, probes, world, cfg, model)
    return _MADE[fast, mode]


def memo(key: tuple, make):
    """``make()``, once per key and mode: the inputs and reference values that do not depend on the answers."""
    key = (fast_mode(), *key)
    if key not in _MADE:
        _MADE[key] = make()
    return _MADE[key]


def observed(probes):
    """(x_u, y_{j≠u}⁺, the training index of j): the lesson's first attribution probe."""
    train = probes.split("train")
    u = train[0]
    j = next(k for k, p in enumerate(train) if p.responses["chosen"] == u.responses["other_chosen"])
    return u.prompt, u.responses["other_chosen"], j


def along(model, obs, direction: list[torch.Tensor], eta: float) -> dict[str, float]:
    """log π(y|x) of the batch ``obs`` (one sequence) along the step θ − s·η·direction: the derivative at s = 0 by
    central differences (h = 1e-4 of the step) and the change at s = 1. The model is restored afterwards."""
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]

    def f(s: float) -> float:
        for p, t, d in zip(params, theta, direction):
            p.copy_(t - s * eta * d)
        return position_stats(model(obs.idx), obs.targets)["logp"][0].item()

    h = 1e-4
    try:
        with torch.no_grad():
            return {"pred": (f(h) - f(-h)) / (2 * h), "actual": f(1.0) - f(0.0)}
    finally:
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)


WHY = "float64 central differences: truncation and rounding far below this"


def worst(problem: str, got, want, names: list[str]) -> str:
    """The problem, with the entry where ``got`` is furthest from ``want`` named."""
    if "off by" not in problem:
        return problem
    return f"{problem}; furthest at {names[int((torch.as_tensor(got, dtype=torch.float64) - want).abs().argmax())]}"


@exercise(1, "predicted and actual change of one SGD step", "the prediction is the dot product of two parameter "
          "gradients (autograd), times −η; the actual change needs a real step on a copy of the model")
def check_step(answers):
    m64, tok, probes, _, cfg, _ = lesson_setup("hard")
    prompt, response, _ = observed(probes)
    batch = PairData(tok, probes.examples("train"), cfg.batch_size, m64.config.block_size, seed=0).batch(0)

    def reference(eta):
        grad = torch.autograd.grad(sft_loss(m64(batch.idx), batch.targets), list(m64.parameters()))
        r = along(m64, make_batch(tok, [prompt], [response]), grad, eta)
        return torch.tensor([r["pred"], r["actual"]], dtype=torch.float64)

    for eta in (cfg.attr_lr, 10 * cfg.attr_lr):
        got = answers.step_change(copy.deepcopy(m64), tok, prompt, response, batch, eta)
        want = memo(("step", eta), lambda: reference(eta))
        problem = compare(got, want, 1e-6, WHY)
        if problem:
            entries = ["the prediction", "the actual change"]
            return f"η = {eta:g}, y_(j≠u)⁺ under x_u: {worst(problem, got, want, entries)}"


@exercise(2, "one prediction per example of the batch", "one gradient per sequence of the batch; the batch loss "
          "is their mean, so each example's share of ∇L carries 1/B")
def check_per_example(answers):
    for mode in ("easy", "hard"):
        m64, tok, probes, _, cfg, _ = lesson_setup(mode)
        prompt, response, j = observed(probes)
        train = probes.split("train")
        rows = [train[k] for k in (0, j, 1, 2, 3)]  # u, j and three others
        batch = make_batch(tok, [p.prompt for p in rows], [p.responses["chosen"] for p in rows])
        got = answers.per_example(copy.deepcopy(m64), tok, prompt, response, batch, cfg.attr_lr)

        def reference():
            obs, B, out = make_batch(tok, [prompt], [response]), batch.idx.shape[0], []
            for b in range(B):
                loss_b = sft_loss(m64(batch.idx[b:b + 1]), batch.targets[b:b + 1]) / B  # example b's part of L
                out.append(along(m64, obs, torch.autograd.grad(loss_b, list(m64.parameters())), cfg.attr_lr)["pred"])
            return torch.tensor(out, dtype=torch.float64)

        want = memo(("per_example", mode), reference)
        problem = compare(got, want, 1e-6, WHY)
        if problem:
            names = ["u", "j", "the third example", "the fourth", "the fifth"]
            return f"{mode} mode, a batch of u, j and three others: {worst(problem, got, want, names)}"


def first_sentence(answer: str) -> str:
    words = answer.split()
    return " ".join(words[: words.index(".") + 1] if "." in words else words)


def parse(sentence: str):
    """(name, relation, value) of a sentence written by one of the world's fact templates, else None."""
    for rel, (values, canonical, rephrased, _) in RELATIONS.items():
        for template in (canonical, rephrased):
            pattern = re.escape(template).replace(re.escape("{n}"), r"(\w+)").replace(re.escape("{v}"), r"(\w+)")
            m = re.fullmatch(pattern, sentence)
            if m and m[1] in NAMES and m[2] in values:
                return m[1], rel, m[2]
    return None


def source(world, item, answer: str) -> int:
    """The code of one answer, from the parsed sentence and the world's facts."""
    fact = parse(first_sentence(answer))
    if fact is None:
        return 0
    name, rel, value = fact
    if (name, rel) == (item.name, item.relation):  # the right question: the true value, or a wrong one
        trained = {world.facts[n][rel] for n in world.train_people}
        return 0 if value == item.value else 4 if value in trained else 5
    if name not in world.train_people or world.facts[name][rel] != value:
        return 0  # not a training prompt's fact
    return 1 if rel == item.relation else 2 if name == item.name else 3


def hand_made(world):
    """(items, answers): every code at least once, and a held-out person's true fact (not a training fact)."""
    test, train = world.test_items(), world.train_items()
    it, tr = test[0], train[0]
    same_rel = next(o for o in train if o.relation == it.relation)
    other_rel = next(o for o in train if o.relation != it.relation)
    trained = {o.value for o in train if o.relation == it.relation}
    wrong_trained = next(v for v in RELATIONS[it.relation][0] if v in trained and v != it.value)
    # a value no training fact of the relation has, but some other person's fact has: (item, value)
    untrained = next((t, v) for t in test for v in RELATIONS[t.relation][0]
                     if v != t.value and v not in {o.value for o in train if o.relation == t.relation}
                     and any(world.facts[n][t.relation] == v for n in world.people))
    pairs = [(it, it.chosen), (it, world.fact(it.name, it.relation, rephrase=True)),
             (it, same_rel.chosen), (it, world.fact(same_rel.name, same_rel.relation, rephrase=True)),
             (it, other_rel.chosen), (it, world.fact(it.name, it.relation, wrong_trained)),
             (untrained[0], world.fact(untrained[0].name, untrained[0].relation, untrained[1], rephrase=True)),
             (it, test[1].chosen), (it, "the old river runs near the tall house ."), (it, ""),
             (tr, world.fact(tr.name, next(r for r in RELATIONS if r != tr.relation)) + " the old river ."),
             (tr, world.fact(same_rel.name, same_rel.relation))]
    return [i for i, _ in pairs], [a for _, a in pairs]


def codes_problem(got, world, items, answers, what: str) -> str | None:
    want = torch.tensor([source(world, i, a) for i, a in zip(items, answers)])
    got = torch.as_tensor(got)
    problem = compare(got, want, 0.5, "one code per answer")
    if problem and "off by" not in problem:
        return f"{what}: {problem}"
    bad = (got.long() != want).nonzero()[:, 0].tolist()
    if bad:
        k = bad[0]
        return (f"{what}: {len(bad)} of {len(want)} codes differ; the first: code {int(got[k])} for the answer "
                f"{answers[k]!r} to {items[k].prompt!r}")
    return None


@exercise(3, "where an answer comes from", "read the first sentence as world.classify does; for other_question, find "
          "the training item whose fact it states (either phrasing); for wrong_value, collect the values that the "
          "training items of that relation have")
def check_sources(answers):
    _, tok, probes, world, cfg, model = lesson_setup("hard")
    items, texts = hand_made(world)
    problem = codes_problem(answers.answer_sources(world, items, texts), world, items, texts, "hand-made answers")
    if problem:
        return problem
    items = world.train_items() + world.test_items()
    for name, texts in memo(("answers",), lambda: model_answers(model, tok, probes, cfg, items)):
        problem = codes_problem(answers.answer_sources(world, items, texts), world, items, texts, name)
        if problem:
            return problem


def model_answers(model, tok, probes, cfg, items) -> list[tuple[str, list[str]]]:
    """The greedy answers to ``items`` of the model before and after an epoch of plain SGD at the attribution's
    learning rate (on a copy)."""
    m = copy.deepcopy(model)
    data = PairData(tok, probes.examples("train"), cfg.batch_size, m.config.block_size, seed=0)
    out = [("the base model's answers", greedy_answers(m, tok, [i.prompt for i in items], 24))]
    for step in range(data.batches_per_epoch):
        b = data.batch(step)
        grads = torch.autograd.grad(sft_loss(m(b.idx), b.targets), list(m.parameters()))
        with torch.no_grad():
            for p, g in zip(m.parameters(), grads):
                p.sub_(cfg.attr_lr * g)
    return out + [("after an epoch of plain SGD", greedy_answers(m, tok, [i.prompt for i in items], 24))]


CHECKS = [check_step, check_per_example, check_sources]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
