"""Exercises of lesson 3 — the eNTK K: which examples are "similar" to the model.

Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    TINYLD_FAST=1 python lessons/exercises/03_entk.py    # on the fast-mode models, as in the lab

Each answer is checked against an independent computation (K recomputed with the roles swapped; the gradients of
the chosen logits taken one by one with autograd and compared as cosines), and a failed check prints a hint. The
checks use the lesson's pretrained model (``pretrained(seed=0, steps=400)`` with TINYLD_FAST=1, else 3000 steps)
and its prompts (``items``: a list of world items, like the lesson's 20). Worked solutions:
``lessons/solutions/03_entk.py``.
"""
import sys
from pathlib import Path

import torch

from tinyld import GPT, GPTConfig
from tinyld.data import make_batch
from tinyld.kernel import kernel_restricted
from tinyld.updates import lm_rows
from tinyld.world import RELATIONS

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, lesson_model, run_checks  # noqa: E402

KINDS = ("same relation, other person", "same person, other relation", "nothing shared")  # the lesson's `means`


def swapped(K_ou: torch.Tensor) -> torch.Tensor:
    """Exercise 1: K(x_o, x_u) between one observed and one updating position, on chosen tokens: (S_o, S_u) with
    entry [i, j] = ∇z_i(x_o) · ∇z_j(x_u). Return K(x_u, x_o) on the same tokens, (S_u, S_o), from ``K_ou`` alone.
    Predict first: is it K_ou itself?"""
    raise NotImplementedError


def kind_means(model, tok, items) -> torch.Tensor:
    """Exercise 2: the lesson's ``means`` for any model: the mean gradient cosine C_ab = K_ab / sqrt(K_aa K_bb) at
    the answer word of ``items``, over the pairs a ≠ b of each kind in KINDS (in that order). Shape (3,). The
    checker runs it on a randomly initialised model: is the similarity learned?"""
    raise NotImplementedError


def first_token_means(model, tok, items) -> torch.Tensor:
    """Exercise 3: the same three means (3,), with each prompt's logit taken at the row that predicts the *first*
    response token (the person's name) instead of the answer word. Which kind of pair is the most aligned now?"""
    raise NotImplementedError


_cache = {}


def setup():
    """The lesson's model (float64), its tokenizer and items, cached: the lesson's 20 items (4 people × 5
    relations) and, to keep the checks quick, 9 of them (3 people × 3 relations: every kind of pair is there)."""
    if "setup" not in _cache:
        world, tok, model = lesson_model()
        model = model.double().eval()  # fast mode is read here, when a check runs, as the lessons read it
        people = world.train_people[:2] + world.test_people[:2]
        items = [world.item(n, r) for n in people for r in ["city", "job", "pet", "food", "color"]]
        _cache["setup"] = tok, model, items, [i for i in items if i.name in people[1:] and i.relation in
                                               ("city", "job", "pet")]
    return _cache["setup"]


def random_model(tok, seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).double().eval()


def reference_means(model, tok, items, first: bool) -> torch.Tensor:
    """The three means by another route: each prompt in a batch of its own, the logit's position read off its
    targets, its gradient taken alone with autograd and normalised before the dot products, the kinds as masks."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for it in items:
        batch = make_batch(tok, [it.prompt], [it.chosen])
        t = int(batch.mask[0].nonzero()[0]) + (0 if first else it.chosen.split().index(it.value))  # its row
        g = torch.autograd.grad(model(batch.idx)[0, t, batch.targets[0, t]], params)
        grads.append(torch.cat([x.flatten() for x in g]))
    g = torch.stack(grads)  # (n, P)
    g = g / g.norm(dim=1, keepdim=True)  # (n, P) unit gradients
    C = g @ g.T  # (n, n) their cosines
    rel = torch.tensor([sorted(RELATIONS).index(i.relation) for i in items])  # (n,) a number per relation
    who = torch.tensor([sorted({i.name for i in items}).index(i.name) for i in items])  # (n,) … per person
    same_rel, same_who = rel[:, None] == rel[None, :], who[:, None] == who[None, :]
    masks = (same_rel & ~same_who, same_who & ~same_rel, ~same_rel & ~same_who)  # a ≠ b in every kind
    return torch.stack([C[m].mean() for m in masks]).detach()


def check_means(got, want) -> str | None:
    return compare(got, want, 1e-9, "cosines of the same float64 gradients, taken another way")


@exercise(1, "symmetry across inputs", "each entry of K is a dot product of two parameter gradients, J_o J_uᵀ: what "
          "does swapping the two inputs do to that product?")
def check_swapped(answers):
    tok, model, items, _ = setup()
    u, o = items[0], items[10]  # the lesson's pair: another person, the same relation
    ru, ro = lm_rows(make_batch(tok, [u.prompt], [u.chosen])), lm_rows(make_batch(tok, [o.prompt], [o.chosen]))
    l, m = u.chosen.split().index(u.value), o.chosen.split().index(o.value)
    cities = torch.tensor([tok.encode(c)[0] for c in sorted(RELATIONS["city"][0])])  # the heatmap's tokens
    sel_u = torch.stack([torch.full_like(cities, l), cities], 1)  # (S, 2): (row, token) at x_u's answer position
    sel_o = torch.stack([torch.full_like(cities, m), cities], 1)  # (S, 2) at x_o's
    if "K_ou" not in _cache:
        _cache["K_ou"] = kernel_restricted(model, ro, sel_o, ru, sel_u)  # (S, S) = K(x_o, x_u) on the city tokens
    got = answers.swapped(_cache["K_ou"].clone())
    want = kernel_restricted(model, ru, sel_u, ro, sel_o)  # new Jacobians, the roles swapped
    return compare(got, want, 1e-9 * want.abs().max().item(), "float64 rounding of the same dot products")


@exercise(2, "is the similarity learned?", "the lesson's cells after `items = …` do it for its model: run the same "
          "steps on the model given (one row per item at its answer word, K, cosines), then average each kind over "
          "its pairs a ≠ b")
def check_kind_means(answers):
    tok, model, _, items = setup()
    for seed in (0, 1):
        m = random_model(tok, seed)
        got = answers.kind_means(m, tok, items)
        key = f"random{seed}"
        if key not in _cache:
            _cache[key] = reference_means(m, tok, items, first=False)
        problem = check_means(got, _cache[key])
        if problem:
            return f"a random model (torch.manual_seed({seed})): {problem}"


@exercise(3, "another position", "the row that predicts a response's first token is that response's first row "
          "(rows.group == k); keep its label as the token")
def check_first(answers):
    tok, model, _, items = setup()
    got = answers.first_token_means(model, tok, items)
    if "first" not in _cache:
        _cache["first"] = reference_means(model, tok, items, first=True)
    return check_means(got, _cache["first"])


CHECKS = [check_swapped, check_kind_means, check_first]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
