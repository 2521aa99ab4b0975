"""Worked solutions to the exercises of lesson 7 — answer B to question A: the hallucination mechanism.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/07_hallucination.py``.
"""
import copy
import sys
from pathlib import Path

import torch

from tinyld.data import make_batch
from tinyld.evaluate import response_logprobs
from tinyld.losses import sequence_logprob, sft_loss
from tinyld.world import RELATIONS

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def grad_logprob(model, tok, prompt: str, response: str) -> list[torch.Tensor]:
    """∇θ log π(response|prompt), one tensor per parameter."""
    b = make_batch(tok, [prompt], [response])
    return torch.autograd.grad(sequence_logprob(model(b.idx), b.targets).sum(), list(model.parameters()))


def dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def step_change(model, tok, prompt: str, response: str, batch, eta: float) -> torch.Tensor:
    """The step is Δθ = −η∇L, and to first order log π(y|x) changes by ⟨∇θ log π(y|x), Δθ⟩: the sum over y's
    positions of the label entries of −η·A·K·G (lesson 7's by-hand cell, for a whole batch). The actual change
    differs by terms of order η²: the error grows like η² while the change itself grows like η, so, to leading
    order, the relative error grows like η. Ten times the learning rate, about ten times the relative error of each
    step: the attribution's summed predictions then drift further from the actual curve."""
    params = list(model.parameters())
    g_obs = grad_logprob(model, tok, prompt, response)
    g_loss = torch.autograd.grad(sft_loss(model(batch.idx), batch.targets), params)
    predicted = -eta * dot(g_obs, g_loss)
    stepped = copy.deepcopy(model)  # the model itself stays as it was
    with torch.no_grad():
        for p, g in zip(stepped.parameters(), g_loss):
            p.sub_(eta * g)
    actual = response_logprobs(stepped, tok, [prompt], [response])[0] - \
        response_logprobs(model, tok, [prompt], [response])[0]
    return torch.stack([predicted.detach(), actual.to(predicted.dtype)])


def per_example(model, tok, prompt: str, response: str, batch, eta: float) -> torch.Tensor:
    """L is the mean over the B sequences, so ∇L = Σ_b ∇L_b/B and the prediction −η⟨∇log π, ∇L⟩ splits exactly
    into one term per example: the first-order picture is linear in G. In hard mode every answer also carries a
    story sentence, a format the whole batch teaches; in easy mode an answer is one fact sentence. Compare j's term
    with the others' in the two modes."""
    params = list(model.parameters())
    g_obs = grad_logprob(model, tok, prompt, response)
    B = batch.idx.shape[0]
    out = []
    for b in range(B):
        loss_b = -sequence_logprob(model(batch.idx[b:b + 1]), batch.targets[b:b + 1]).sum() / B
        out.append(-eta * dot(g_obs, torch.autograd.grad(loss_b, params)))
    return torch.stack(out).detach()


def answer_sources(world, items: list, answers: list[str], every_person: bool = False) -> torch.Tensor:
    """``world.classify`` gives the kind; the first sentence then names the fact. Held-out prompts are about people
    with no training prompt, so an answer to one can state another training prompt's fact of the same relation or of
    neither, never of the same person; a training prompt can get a fact of its own person early in SFT. A wrong value
    that a training fact of the same relation has is a value SFT taught after that kind of question; one that no
    training fact has did not come from SFT's answers. (``every_person`` is a mistake: it counts every person's
    facts as training facts.)"""
    train = world.train_items()
    said = {world.fact(o.name, o.relation, o.value, rephrase=r): o for o in train for r in (False, True)}
    codes = []
    for item, answer in zip(items, answers):
        kind = world.classify(item, answer)
        words = answer.split()
        first = " ".join(words[: words.index(".") + 1] if "." in words else words)
        if kind == "other_question":
            o = said[first]
            codes.append(1 if o.relation == item.relation else 2 if o.name == item.name else 3)
        elif kind == "wrong_value":
            value = next(v for v in RELATIONS[item.relation][0]
                         if first in (world.fact(item.name, item.relation, v),
                                      world.fact(item.name, item.relation, v, rephrase=True)))
            people = world.people if every_person else world.train_people
            codes.append(4 if value in {world.facts[n][item.relation] for n in people} else 5)
        else:
            codes.append(0)
    return torch.tensor(codes)


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"step_change": lambda *a: step_change(*a) * torch.tensor([-1.0, 1.0], dtype=torch.float64)},
     "off by"),  # the prediction with +η: a step up the loss instead of down
    (2, {"per_example": lambda model, tok, prompt, response, batch, eta: per_example(
        model, tok, prompt, response, batch, eta) * batch.idx.shape[0]},
     "off by"),  # each example's gradient without its 1/B: the shares add up to B times the batch's prediction
    (3, {"answer_sources": lambda world, items, answers: answer_sources(world, items, answers, every_person=True)},
     "codes differ"),  # a held-out person's value counted as a training value
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("07_hallucination"), sys.modules[__name__])) else 1)
