"""Exercises of lesson 5 — the learning dynamics of a digit classifier.

The lesson's run: ``train_digits(epochs=EPOCHS, lr=ETA)`` (its knobs: 6 epochs in fast mode, 15 otherwise), whose
``checkpoints`` are DigitNet state dicts, one per epoch (the first is the initialisation). Fill in each function
below where it says ``raise NotImplementedError``, then run this file:

    TINYLD_FAST=1 python lessons/exercises/05_digits.py    # on the fast-mode models, as in the lab

Each answer is checked against an independent computation (float64 finite differences along the SGD step,
autograd's gradient of the cross-entropy, the closed-form eNTK of the one-hidden-layer net and scipy's Spearman ρ),
and a failed check prints a hint. Worked solutions: ``lessons/solutions/05_digits.py``.
"""
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from tinyld.classify import DigitNet, train_digits

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, fast, run_checks  # noqa: E402

ETA = 0.05  # the lesson's SGD learning rate


def epochs() -> int:
    """The lesson's number of epochs: 6 in fast mode, 15 otherwise."""
    return 6 if fast() else 15


def one_step_dpi(model: DigitNet, x_u: torch.Tensor, y_u: int, x_o: torch.Tensor, y_o: torch.Tensor,
                 eta: float) -> torch.Tensor:
    """Exercise 1: one SGD step of size ``eta`` on the cross-entropy of one image ``x_u`` (64,) with label ``y_u``.
    Return the first-order change of π(y_u) on every observed image ``x_o`` (N, 64), Δπ_o(y_u) = π_o(y_u)·Δ log
    π_o(y_u) with Δ log π = −η·A·K·G, averaged over the observed images of each true class ``y_o`` (N,): shape
    (10,), entry c for class c. (This is ``one_step_picture(...)["dpi"]``: build it yourself.)

    Predict first: after a step on a training 3 (the lesson took a 4), which classes' π(3) rises most? Then look:
    average your answer over the first five training 3s at the epoch-1 model and ``argsort(descending=True)``."""
    raise NotImplementedError


def residual_norms(checkpoints: list[dict], x_u: torch.Tensor, y_u: int) -> torch.Tensor:
    """Exercise 2: the size of what the loss asks of the logits of the updating image, ‖G‖ = ‖π(x_u) − e_{y_u}‖,
    at every checkpoint (DigitNet state dicts in training order): shape (len(checkpoints),).

    Predict first: at the final checkpoint, is Δπ(4) on the other 4s after a step on a training 4 larger or
    smaller than at epoch 1? Then compare exercise 1's answer at ``checkpoints[1]`` and ``checkpoints[-1]`` (its
    entry 4) with how ‖G‖ of that training 4 changes between them."""
    raise NotImplementedError


def first_epoch_change(model0: DigitNet, model1: DigitNet, x: torch.Tensor) -> torch.Tensor:
    """Exercise 3: how much the eNTK changes in the first epoch, on the pairs i < j of the images ``x`` (n, 64)
    (the lesson's 24). Return a (2,) tensor: [the scale ratio, the ranking's ρ], where the scale is the median over
    the pairs i < j of ‖K(x_i, x_j)‖_F at ``model1`` divided by the same median at ``model0``, and ρ is the
    Spearman correlation between the two models' ‖K(x_i, x_j)‖_F over those pairs.

    Predict first: which changes more in the first epoch, the scale or the ranking?"""
    raise NotImplementedError


def lesson_run():
    """The lesson's digits run (the same function and settings, so the same checkpoints)."""
    return _run(epochs())


@functools.lru_cache(maxsize=2)
def _run(n_epochs: int):
    return train_digits(epochs=n_epochs, lr=ETA)


def model_at(checkpoint: dict) -> DigitNet:
    net = DigitNet().double()
    net.load_state_dict(checkpoint)
    return net.eval()


def first_of(y: torch.Tensor, digit: int) -> int:
    return int((y == digit).nonzero()[0, 0])


def finite_difference_dpi(model, x_u, y_u, x_o, y_o, eta, h=1e-5):
    """Δπ_o(y_u) per class, to first order, by a central difference of log π_o(y_u) along the SGD step −η·∇L_u
    (float64; no kernel, no Jacobian)."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    x = {k: p.clone().requires_grad_() for k, p in params.items()}
    loss = F.cross_entropy(functional_call(model, x, (x_u[None],)), torch.tensor([y_u]))
    g = torch.autograd.grad(loss, list(x.values()))

    def logpi(s):
        moved = {k: p - s * gk for (k, p), gk in zip(params.items(), g)}  # θ − s·∇L_u
        with torch.no_grad():
            return functional_call(model, moved, (x_o,)).log_softmax(-1)[:, y_u]  # (N,)

    dlogpi = eta * (logpi(h) - logpi(-h)) / (2 * h)  # (N,) η · d/ds log π(θ − s·∇L_u) at s = 0
    with torch.no_grad():
        dpi = model(x_o).softmax(-1)[:, y_u] * dlogpi  # (N,)
    return torch.stack([dpi[y_o == c].mean() for c in range(10)])  # (10,)


def closed_form_k_norms(model: DigitNet, x: torch.Tensor) -> torch.Tensor:
    """‖K(x_i, x_j)‖_F (n, n) for z = W₂ tanh(W₁x + b₁) + b₂, without autograd: with h = tanh(W₁x + b₁) and
    D = diag(1 − h²), K(x_i, x_j) = (h_i·h_j + 1)·I + (x_i·x_j + 1)·W₂ D_i D_j W₂ᵀ (fc2's weights and bias give the
    first term, fc1's the second)."""
    with torch.no_grad():
        h = torch.tanh(model.fc1(x))  # (n, H)
        W2 = model.fc2.weight  # (10, H)
        d = 1 - h ** 2  # (n, H)
        V = W2.shape[0]
        head = (h @ h.T + 1)[:, :, None, None] * torch.eye(V, dtype=x.dtype)  # (n, n, 10, 10)
        body = torch.einsum("ak,ik,jk,bk->ijab", W2, d, d, W2) * (x @ x.T + 1)[:, :, None, None]  # (n, n, 10, 10)
        return (head + body).flatten(2).norm(dim=2)  # (n, n)


@exercise(1, "one step on a digit, by class", "Δ log π_o = −η·A·(K·G): the gradient g_u of the cross-entropy on "
          "(x_u, y_u) moves the observed logits by −η·J_o·g_u (a JVP, or predict from tinyld.kernel); A takes away "
          "the π-weighted mean; then multiply by π_o(y_u) and average over each class's images")
def check_one_step(answers):
    run = lesson_run()
    xtr, ytr, xte, yte = run.data
    cases = [(run.checkpoints[1], 3), (run.checkpoints[-1], 4)]  # exercise 1's case; exercise 2's later model
    got = [answers.one_step_dpi(model_at(sd), xtr[first_of(ytr, d)], d, xte, yte, ETA) for sd, d in cases]
    for (sd, d), answer, when in zip(cases, got, ("at epoch 1", "at the final checkpoint")):
        want = finite_difference_dpi(model_at(sd), xtr[first_of(ytr, d)], d, xte, yte, ETA)
        problem = compare(answer, want, 1e-7, "a float64 central difference is exact to ~1e-10 here")
        if problem:
            return f"a step on the first training {d} {when}, Δπ({d}) by class: {problem}"


@exercise(2, "the residual of the updating image", "G = ∂L/∂z of the cross-entropy at x_u: softmax of the logits "
          "minus the one-hot label, one norm per checkpoint (load each state dict into DigitNet().double())")
def check_residual(answers):
    run = lesson_run()
    xtr, ytr, _, _ = run.data
    for d in (4, 3):
        x_u = xtr[first_of(ytr, d)]
        got = answers.residual_norms(run.checkpoints, x_u, d)
        want = []
        for sd in run.checkpoints:
            z = model_at(sd)(x_u[None]).detach().requires_grad_()  # (1, 10)
            want.append(torch.autograd.grad(F.cross_entropy(z, torch.tensor([d])), z)[0].norm())
        problem = compare(got, torch.stack(want), 1e-6, "autograd's gradient in float64; the room is for a float32 "
                          "answer")
        if problem:
            return f"the first training {d}: {problem}"


@exercise(3, "scale and ranking in the first epoch", "for each model, K(x_i, x_j) = J_i J_jᵀ is (10, 10) per pair "
          "(kernel from tinyld.kernel gives all of them at once, as in the lesson's section 3); keep the pairs "
          "i < j (torch.triu_indices), take the median for the scale, and spearman from tinyld.classify for ρ")
def check_first_epoch(answers):
    from scipy.stats import spearmanr  # scikit-learn, which the digits need, brings scipy

    run = lesson_run()
    xte = run.data[2]
    pick = torch.randperm(len(xte), generator=torch.Generator().manual_seed(0))[:24]  # the lesson's 24 images
    m0, m1 = model_at(run.checkpoints[0]), model_at(run.checkpoints[1])
    got = torch.as_tensor(answers.first_epoch_change(m0, m1, xte[pick]))
    iu = torch.triu_indices(24, 24, 1)
    n0, n1 = (closed_form_k_norms(m, xte[pick])[iu[0], iu[1]] for m in (m0, m1))  # (276,) each
    want = torch.tensor([n1.median() / n0.median(), spearmanr(n0.numpy(), n1.numpy())[0]], dtype=torch.float64)
    if got.shape != want.shape:
        return compare(got, want, 0, "[scale ratio, ρ]")
    for k, name, why in ((0, "the scale ratio", "the closed-form eNTK agrees to rounding"),
                         (1, "ρ", "scipy's Spearman ρ on the same 276 pairs, exact to rounding")):
        problem = compare(got[k], want[k], 1e-9, why)
        if problem:
            return f"{name}: {problem}"


CHECKS = [check_one_step, check_residual, check_first_epoch]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
