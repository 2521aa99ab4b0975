"""Worked solutions to the exercises of lesson 3 — the eNTK K.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/03_entk.py``.
"""
import statistics
import sys
from pathlib import Path

import torch

from tinyld.data import make_batch
from tinyld.kernel import kernel_restricted
from tinyld.updates import lm_rows

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def swapped(K_ou: torch.Tensor) -> torch.Tensor:
    """K(x_o, x_u) = J_o J_uᵀ, a Gram matrix of logit gradients across two inputs. Swapping the inputs gives
    J_u J_oᵀ = (J_o J_uᵀ)ᵀ: the transpose, exactly. It is *not* K_ou itself: entry [i, j] pairs token i at the
    observed position with token j at the updating one, and [j, i] pairs them the other way round. Only K(x, x)
    at one position is symmetric (and PSD)."""
    return K_ou.T


def _means(model, tok, items, pick, cosine: bool = True, self_pairs: bool = False) -> torch.Tensor:
    """The lesson's recipe with the row chosen by ``pick(item, its rows)``: K on one chosen logit per item, the
    cosine C_ab = K_ab / sqrt(K_aa K_bb), and the mean of each kind over its pairs a ≠ b. (``cosine`` and
    ``self_pairs`` only serve the common mistakes below.)"""
    rows = lm_rows(make_batch(tok, [i.prompt for i in items], [i.chosen for i in items]))
    sel = []
    for k, it in enumerate(items):
        r = int(pick(it, (rows.group == k).nonzero()[:, 0]))  # the chosen row of response k
        sel.append([r, int(rows.labels[r])])  # its own token
    K = kernel_restricted(model, rows, torch.tensor(sel))  # (n, n)
    d = K.diag().sqrt()
    C = K / d[:, None] / d[None, :] if cosine else K  # (n, n)
    pairs = [(a, b) for a in range(len(items)) for b in range(len(items)) if a != b or self_pairs]
    kinds = [[C[a, b].item() for a, b in pairs if items[a].relation == items[b].relation],
             [C[a, b].item() for a, b in pairs if items[a].name == items[b].name],
             [C[a, b].item() for a, b in pairs
              if items[a].relation != items[b].relation and items[a].name != items[b].name]]
    return torch.tensor([statistics.mean(v) for v in kinds], dtype=torch.float64)


def answer_row(item, rows):
    return rows[item.chosen.split().index(item.value)]  # the row that predicts the answer word


def kind_means(model, tok, items) -> torch.Tensor:
    """At random init the answer word's gradients hardly know the people: "same person" is about 0, as "nothing
    shared" is, so the lesson's second assert fails. "Same relation" stays a little positive (0.05–0.1 on the
    lesson's 20 prompts over the seeds we tried): same-relation prompts share most of their words, and the
    gradients of similar inputs are similar even in a random network. With "nothing shared" at about 0, "more than
    twice it" holds or fails on noise: compare the means themselves. After pretraining, "same person" has risen
    from about 0 to about 0.2, and both related kinds sit at more than twice the unrelated one: the similarity by
    person is learned, the one by relation mostly so."""
    return _means(model, tok, items, answer_row)


def first_token_means(model, tok, items) -> torch.Tensor:
    """The first response token is the person's name, predicted from "answer :". Two prompts about one person
    ask for the same token, and both prompts contain it: "same person" becomes by far the most aligned kind
    (about 0.8 in fast mode, 0.9 in full mode). It is so even in a random model, so this similarity is not
    learned: it is the same logit, read after inputs that share a word. What a row is similar to depends on the
    token it predicts."""
    return _means(model, tok, items, lambda item, rows: rows[0])


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"swapped": lambda K_ou: K_ou}, "off by"),  # K across two inputs is not symmetric: only K(x, x) is
    (2, {"kind_means": lambda model, tok, items: _means(model, tok, items, answer_row, self_pairs=True)},
     "off by"),  # each prompt paired with itself (cosine 1) counts as "related"
    (3, {"first_token_means": lambda model, tok, items: _means(model, tok, items, lambda it, rows: rows[0],
                                                               cosine=False)},
     "off by"),  # raw K, not the cosine: the sizes of the gradients swamp their alignment
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("03_entk"), sys.modules[__name__])) else 1)
