"""Exercises of lesson 8 — the squeezing effect, in one softmax.

A negative step of size η′ on label y (free logits): Δz = η′(π − e_y), π′ = softmax(z + Δz). Fill in each function
below where it says ``raise NotImplementedError``, then run this file:

    python lessons/exercises/08_squeezing.py

Each answer is checked against ``tinyld.squeeze.who_moves`` (float64), and a failed check prints a hint. Worked
solutions: ``lessons/solutions/08_squeezing.py``.
"""
import sys
from pathlib import Path

import torch

from tinyld.squeeze import who_moves

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402

BASE = [3.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -5.0]  # lesson 8's logits: label 0 the peak


def squeezed_mass(z: torch.Tensor, y: int, eta: float) -> float:
    """Exercise 1: the probability that the labels other than y and the top label (argmax of π) lose in the step,
    net: Σ_{i ∉ {y, top}} (π_i − π′_i), where a label that rises counts negatively (so the sum can be negative). A better measure of squeezing than the top label's gain when the runner-up is
    strong (set BASE[1] = 2.6 in the lesson)."""
    raise NotImplementedError


def log_z(z: torch.Tensor, y: int, eta: float) -> float:
    """Exercise 2: log Z = log Σ_j π_j exp(Δz_j) for the step. Its sign decides whether every other label can rise
    (a label i ≠ y rises exactly when η′π_i > log Z)."""
    raise NotImplementedError


def falling(z: torch.Tensor, y: int, eta: float) -> torch.Tensor:
    """Exercise 3: a (V,) bool mask of the labels i ≠ y whose probability falls in the step (False at y itself)."""
    raise NotImplementedError


def cases():
    """(z, y, η′): off-policy in a valley; on-policy at the peak; on-policy at the runner-up; a strong runner-up;
    a flatter π with a big step (lesson 8's exercises)."""
    base = torch.tensor(BASE, dtype=torch.float64)
    strong = base.clone()
    strong[1] = 2.6
    return [(base, 9, 1.0), (base, 0, 1.0), (base, 1, 1.0), (strong, 9, 1.0), (0.5 * base, 0, 8.0)]


@exercise(1, "the net loss of the labels other than y and the top", "π′ comes from softmax(z + Δz); leave out y "
          "and the top label (the argmax of π before the step), and sum π − π′ over the rest, gains included")
def check_squeezed(answers):
    for z, y, eta in cases():
        m = who_moves(z, y, eta)
        keep = torch.ones(len(z), dtype=torch.bool)
        keep[[y, int(m["pi"].argmax())]] = False
        want = (m["pi"] - m["pi_after"])[keep].sum()
        problem = compare(answers.squeezed_mass(z, y, eta), want, 1e-12, "exact to rounding in float64")
        if problem:
            return f"z = {z.tolist()[:3]}…, y = {y}, η′ = {eta}: {problem}"


@exercise(2, "the sign of log Z", "Z is the normaliser after the step: Σ_j π_j exp(Δz_j) with Δz = η′(π − e_y); "
          "compare π_y with ‖π‖² to predict its sign to first order")
def check_log_z(answers):
    for z, y, eta in cases():
        problem = compare(answers.log_z(z, y, eta), who_moves(z, y, eta)["log_Z"], 1e-12,
                          "exact to rounding in float64")
        if problem:
            return f"y = {y}, η′ = {eta}: {problem}"


@exercise(3, "which labels fall", "the threshold rule: a label i ≠ y rises exactly when π_i > log(Z)/η′")
def check_falling(answers):
    for z, y, eta in cases():
        want = ~who_moves(z, y, eta)["rises"]
        want[y] = False
        got = torch.as_tensor(answers.falling(z, y, eta))
        problem = compare(got.double(), want.double(), 0, "a yes/no per label")
        if problem:
            return f"y = {y}, η′ = {eta}: {problem}"


CHECKS = [check_squeezed, check_log_z, check_falling]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
