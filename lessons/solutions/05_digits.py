"""Worked solutions to the exercises of lesson 5 — the learning dynamics of a digit classifier.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/05_digits.py``.
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp

from tinyld.classify import DigitNet, spearman
from tinyld.kernel import kernel
from tinyld.updates import class_rows

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def one_step_dpi(model: DigitNet, x_u: torch.Tensor, y_u: int, x_o: torch.Tensor, y_o: torch.Tensor,
                 eta: float) -> torch.Tensor:
    """The three factors, by hand. The gradient of the loss on (x_u, y_u) is g_u = J_uᵀG_u; the step −η·g_u moves
    the observed logits by Δz_o = −η·J_o g_u = −η·K(x_o, x_u)·G_u, one forward-mode JVP. A turns a change of the
    logits into a change of log π: Δ log π = Δz − Σ_j π_j Δz_j. Then Δπ(y_u) = π(y_u)·Δ log π(y_u).

    For a 3 at epoch 1, averaged over the first five training 3s, π(3) rises most on other 3s (+0.084), then on
    9s (+0.034), 2s (+0.029) and 5s (+0.015), and falls a little on 4s; the first 3 alone puts the same four classes
    on top: those are the digits whose images K finds similar to a 3."""
    pi, dlogpi = one_step(model, x_u, y_u, x_o, eta)
    dpi = (pi * dlogpi)[:, y_u]  # (N,)
    return torch.stack([dpi[y_o == c].mean() for c in range(10)])  # (10,)


def one_step(model: DigitNet, x_u: torch.Tensor, y_u: int, x_o: torch.Tensor, eta: float):
    """(π, Δ log π) on the observed images, (N, 10) each, for one SGD step on (x_u, y_u)."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    g_u = grad(lambda p: F.cross_entropy(functional_call(model, p, (x_u[None],)), torch.tensor([y_u])))(params)
    step = {k: -eta * g for k, g in g_u.items()}  # the SGD step, θ' − θ
    z, dz = jvp(lambda p: functional_call(model, p, (x_o,)), (params,), (step,))  # (N, 10) each: z and −η·K·G
    pi = z.softmax(-1)  # (N, 10)
    return pi, dz - (pi * dz).sum(-1, keepdim=True)  # A·Δz: (N, 10)


def residual_norms(checkpoints: list[dict], x_u: torch.Tensor, y_u: int) -> torch.Tensor:
    """G = π − e_y is how far the updating image still is from its label: near 1 at the initialisation (π almost
    uniform), shrinking as the model learns the image. Δπ(4) on the other 4s shrinks too. Averaged over the
    lesson's first five training 4s, it falls from 0.12 at epoch 1 to 0.03 at the end of the fast run (6 epochs;
    0.01 after 15), while their mean ‖G‖ falls from 0.66 to 0.19 (0.08). ‖K‖ grows meanwhile, so the kernel does
    not explain it. A does its part on the observed side: the test 4s are nearly certain by then, and
    Δ log π = Δz − Σ_j π_j Δz_j is near 0 where π is nearly one-hot. A probability near 1 has little room left."""
    out = []
    net = DigitNet().double().eval()
    for sd in checkpoints:
        net.load_state_dict(sd)
        with torch.no_grad():
            pi = net(x_u[None]).softmax(-1)[0]  # (10,)
        out.append((pi - F.one_hot(torch.tensor(y_u), 10).double()).norm())
    return torch.stack(out)  # (len(checkpoints),)


def first_epoch_change(model0: DigitNet, model1: DigitNet, x: torch.Tensor) -> torch.Tensor:
    """The lesson's section 3 on two checkpoints. In the first epoch the median ‖K‖ grows by half (×1.51) while
    the ranking keeps a Spearman ρ of 0.89 with the initial one: the scale changes more. (The checkpoints 0 and 1
    are the same in both modes.) Much of the ranking is there at the initialisation: for this net K(x_i, x_j)
    depends on the images through x_i·x_j and the random features' overlap (the closed form in the exercise file's
    check), so the first epoch mostly scales K up."""
    rows = class_rows(x)
    iu = torch.triu_indices(len(x), len(x), 1)  # the pairs i < j
    norms = []
    for model in (model0, model1):
        K = kernel(model, rows)  # (n, 10, n, 10)
        norms.append(K.permute(0, 2, 1, 3).flatten(2).norm(dim=2)[iu[0], iu[1]])  # (n(n−1)/2,)
    return torch.tensor([(norms[1].median() / norms[0].median()).item(), spearman(norms[0], norms[1])],
                        dtype=torch.float64)


def _all_entries_rho(model0, model1, x):
    """ρ over all n × n entries (the diagonal and both orders of each pair), as entk_ranking_stability ranks."""
    n = [kernel(m, class_rows(x)).permute(0, 2, 1, 3).flatten(2).norm(dim=2).flatten() for m in (model0, model1)]
    scale = first_epoch_change(model0, model1, x)[0].item()
    return torch.tensor([scale, spearman(n[0], n[1])], dtype=torch.float64)


def _dlogpi_by_class(model, x_u, y_u, x_o, y_o, eta):
    dlogpi = one_step(model, x_u, y_u, x_o, eta)[1][:, y_u]  # (N,)
    return torch.stack([dlogpi[y_o == c].mean() for c in range(10)])  # (10,)


def _label_entry_only(checkpoints, x_u, y_u):
    out = []
    for sd in checkpoints:
        net = DigitNet().double()
        net.load_state_dict(sd)
        with torch.no_grad():
            out.append(1 - net(x_u[None]).softmax(-1)[0, y_u])
    return torch.stack(out)


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"one_step_dpi": _dlogpi_by_class}, "off by"),  # Δ log π(y_u), not Δπ(y_u): the factor π_o(y_u) left out
    (2, {"residual_norms": _label_entry_only}, "off by"),  # only the label's entry 1 − π_y: the other π_j are in G too
    (3, {"first_epoch_change": _all_entries_rho}, "ρ: it is off by"),  # the diagonal and both orders counted
]


if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("05_digits"), sys.modules[__name__])) else 1)
