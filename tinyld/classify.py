"""The digits experiment (paper Fig. 1): learning dynamics of a small classifier on real handwritten digits.

The data are scikit-learn's bundled 8×8 digits (1,797 images, no download). The classifier is a one-hidden-layer
MLP trained with SGD. Three pictures:

1. **One step** on one image of a 4 changes log π(4) on every other image. We group that change by the other
   image's true class and put ‖K(x_o, x_u)‖_F next to it. The image itself and other 4s rise most, look-alikes
   rise too, and dissimilar digits barely move.
2. **The accumulated mean prediction matrix.** Row c is the mean of π over images of class c, averaged over
   training checkpoints. Its off-diagonal mass sits between look-alike classes.
3. **eNTK ranking stability.** Over a fixed set of image pairs, the Spearman correlation between the ranking of
   ‖K‖ at each checkpoint and at the end of training. The scale of K changes a lot; its ranking soon stops
   changing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tinyld.kernel import kernel, predict
from tinyld.runtime import TinyldError, check_int, check_number, check_seed
from tinyld.updates import SFTUpdate, class_rows


def load_digits(seed: int = 0, n_test: int = 360, dtype=torch.float64):
    """(x_train, y_train, x_test, y_test): a seeded split, pixels standardised with the training mean and std.

    Standardising removes the "every image has ink in the middle" direction that would otherwise make all
    images look alike to the eNTK."""
    check_seed("seed", seed)
    check_int("n_test", n_test, 1, 1797 - 10)
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise ImportError("the digits experiment needs scikit-learn (it ships the images): "
                          "pip install \".[lessons]\" (or scikit-learn)") from None
    d = sk_digits()
    x = torch.tensor(d.data, dtype=dtype) / 16.0  # (1797, 64)
    y = torch.tensor(d.target, dtype=torch.long)  # (1797,)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    mu, sd = x[tr].mean(0), x[tr].std(0) + 0.1  # (64,) +0.1: border pixels are almost always blank
    return (x[tr] - mu) / sd, y[tr], (x[te] - mu) / sd, y[te]


class DigitNet(nn.Module):
    """64 pixels → H tanh units → 10 logits."""

    def __init__(self, hidden: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))  # (B, 10)


@dataclass
class DigitsRun:
    model: DigitNet  # the final model
    checkpoints: list[dict]  # state dicts, one per epoch (the first is the initialisation)
    test_acc: list[float]  # test accuracy at each checkpoint
    data: tuple  # (x_train, y_train, x_test, y_test)


def train_digits(epochs: int = 10, lr: float = 0.05, batch_size: int = 32, hidden: int = 64,
                 seed: int = 0) -> DigitsRun:
    """Mini-batch SGD on cross-entropy; a checkpoint at the start and after every epoch."""
    check_int("epochs", epochs, 1)
    check_number("lr", lr, 0, strict=True)
    check_int("batch_size", batch_size, 1)
    check_int("hidden", hidden, 1)
    xtr, ytr, xte, yte = load_digits(seed)
    torch.manual_seed(seed)
    model = DigitNet(hidden).double()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)

    def snapshot():
        ckpts.append({k: v.clone() for k, v in model.state_dict().items()})
        with torch.no_grad():
            acc.append((model(xte).argmax(-1) == yte).double().mean().item())

    ckpts, acc = [], []
    snapshot()
    for _ in range(epochs):
        for idx in torch.randperm(len(ytr), generator=g).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
        snapshot()
    return DigitsRun(model, ckpts, acc, (xtr, ytr, xte, yte))


def one_step_picture(model: nn.Module, x_u: torch.Tensor, y_u: int, x_o: torch.Tensor, y_o: torch.Tensor,
                     eta: float = 0.05) -> dict:
    """One SGD step on (x_u, y_u), read off every observed image and grouped by that image's true class.

    Returns three (10,) tensors, each a mean over the observed images of one class: ``dpi``, the predicted
    Δπ(y_u) = π(y_u)·Δ log π(y_u) to first order; ``dlogpi``, the predicted Δ log π(y_u); and ``k_norm``,
    ‖K(x_o, x_u)‖_F.
    """
    check_int("y_u", y_u, 0, 9)
    model.eval()
    up = SFTUpdate(class_rows(x_u[None], torch.tensor([y_u])))
    d = predict(model, class_rows(x_o), up, eta)[:, y_u]  # (N_o,) Δ log π_o(y_u)
    with torch.no_grad():
        pi = model(x_o).softmax(-1)[:, y_u]  # (N_o,)
    kn = kernel(model, class_rows(x_o), class_rows(x_u[None])).flatten(1).norm(dim=1)  # (N_o,)
    by_class = lambda v: torch.stack([v[y_o == c].mean() for c in range(10)])  # noqa: E731  (10,)
    return {"dpi": by_class(pi * d), "dlogpi": by_class(d), "k_norm": by_class(kn)}


@torch.no_grad()
def mean_prediction_matrix(run: DigitsRun) -> torch.Tensor:
    """(10, 10): row c = mean π over test images of class c, averaged over the checkpoints (after the first)."""
    if len(run.checkpoints) < 2:
        raise TinyldError("the run has no checkpoint after training: train for at least one epoch")
    _, _, xte, yte = run.data
    model = DigitNet(run.model.fc1.out_features).double()
    total = torch.zeros(10, 10, dtype=torch.float64)
    for sd in run.checkpoints[1:]:
        model.load_state_dict(sd)
        pi = model(xte).softmax(-1)  # (N, 10)
        total += torch.stack([pi[yte == c].mean(0) for c in range(10)])
    return total / (len(run.checkpoints) - 1)


def lookalike_pairs(M: torch.Tensor, k: int = 5) -> list[tuple[int, int, float]]:
    """The k largest symmetric off-diagonal entries (M_ij + M_ji)/2 of a prediction matrix."""
    S = (M + M.T) / 2
    pairs = [(i, j, S[i, j].item()) for i in range(10) for j in range(i + 1, 10)]
    return sorted(pairs, key=lambda p: -p[2])[:k]


def entk_ranking_stability(run: DigitsRun, n_images: int = 24, seed: int = 0) -> list[float]:
    """Spearman correlation between ‖K(x_i, x_j)‖_F over all pairs of ``n_images`` test images, at each
    checkpoint vs the final one."""
    _, _, xte, _ = run.data
    check_int("n_images", n_images, 2, len(xte))
    pick = torch.randperm(len(xte), generator=torch.Generator().manual_seed(seed))[:n_images]
    rows = class_rows(xte[pick])
    model = DigitNet(run.model.fc1.out_features).double().eval()
    norms = []
    for sd in run.checkpoints:
        model.load_state_dict(sd)
        K = kernel(model, rows)  # (n, 10, n, 10)
        norms.append(K.permute(0, 2, 1, 3).flatten(2).norm(dim=2).flatten())  # (n·n,)
    return [spearman(n, norms[-1]) for n in norms]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (no ties expected in continuous data)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return ((ra * rb).sum() / (ra.norm() * rb.norm())).item()
