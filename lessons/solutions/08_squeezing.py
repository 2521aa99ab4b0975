"""Worked solutions to the exercises of lesson 8 — the squeezing effect, in one softmax.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/08_squeezing.py``.
"""
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def step(z: torch.Tensor, y: int, eta: float):
    """π, the step Δz = η′(π − e_y) and π′."""
    pi = torch.softmax(z.double(), -1)
    dz = eta * (pi - torch.eye(len(pi), dtype=torch.float64)[y])
    return pi, dz, torch.softmax(z.double() + dz, -1)


def squeezed_mass(z: torch.Tensor, y: int, eta: float) -> float:
    """What the labels other than y and the peak lose, net (a label that rises counts as a negative loss). With a
    strong runner-up (BASE[1] = 2.6) the peak's gain is a poorer sign of squeezing, since one assert on it fails
    there; the net loss of the other labels is still positive off-policy, and that loss is the squeezing.
    On-policy (y is the peak) the others gain, so the answer is negative."""
    pi, _, after = step(z, y, eta)
    keep = torch.ones(len(pi), dtype=torch.bool)
    keep[[y, int(pi.argmax())]] = False
    return (pi - after)[keep].sum().item()


def log_z(z: torch.Tensor, y: int, eta: float) -> float:
    """log Σ_j π_j exp(Δz_j). To first order, Σ_j π_j Δz_j = η′(‖π‖² − π_y): negative when y is the peak
    (π_y > ‖π‖²: every other label rises), positive in a valley. At the runner-up, π_y can sit on either side of
    ‖π‖², so "on-policy" there need not spare the others."""
    pi, dz, _ = step(z, y, eta)
    return math.log((pi * dz.exp()).sum().item())


def falling(z: torch.Tensor, y: int, eta: float) -> torch.Tensor:
    """π′_i/π_i = exp(Δz_i)/Z, so label i falls exactly when η′π_i < log Z (Δz_i = η′π_i for i ≠ y): the
    small labels fall first. With a big step on a flat π, log Z can be positive even when y is the peak."""
    pi, _, _ = step(z, y, eta)
    out = eta * pi < log_z(z, y, eta)
    out[y] = False
    return out


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"squeezed_mass": lambda z, y, eta: (lambda pi, _, after: (after - pi).sum().item())(*step(z, y, eta))},
     "off by"),  # the whole vocabulary, and the wrong sign: Σ(π′ − π) is 0
    (2, {"log_z": lambda z, y, eta: (lambda pi, dz, _: (pi * dz).sum().item())(*step(z, y, eta))},
     "off by"),  # the first-order value of log Z only: right sign, wrong size for a big step
    (3, {"falling": lambda z, y, eta: (lambda pi, _, after: after < pi)(*step(z, y, eta))},
     "a yes/no per label"),  # y itself is counted as falling
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("08_squeezing"), sys.modules[__name__])) else 1)
