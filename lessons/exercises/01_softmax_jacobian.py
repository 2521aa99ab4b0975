"""Exercises of lesson 1 — the softmax Jacobian A = I − 1πᵀ.

Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    python lessons/exercises/01_softmax_jacobian.py

Each answer is checked against an independent computation (autograd's Jacobian, a numerical eigensolver), and a
failed check prints a hint. Worked solutions: ``lessons/solutions/01_softmax_jacobian.py``.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402


def spectrum(V: int) -> list[float]:
    """Exercise 1: the V eigenvalues of A = I − 1πᵀ, sorted from small to large. (They do not depend on π.)"""
    raise NotImplementedError


def symmetric_logits(V: int) -> torch.Tensor:
    """Exercise 2: logits z of shape (V,) for which A is symmetric."""
    raise NotImplementedError


def lower_likely_class(z: torch.Tensor) -> torch.Tensor:
    """Exercise 3: the first-order change of log π (shape (V,)) when the logit of the most likely class k drops by
    one, Δz = −e_k. Write it with π = softmax(z) alone, without forming A."""
    raise NotImplementedError


def jacobian(z: torch.Tensor) -> torch.Tensor:
    """A at z, by autograd: the reference the checks use (∂ log softmax(z) / ∂z)."""
    return torch.autograd.functional.jacobian(lambda x: torch.log_softmax(x, -1), z.double())


@exercise(1, "the spectrum of A", "A·1 = 0 gives one eigenvalue; for any v with πᵀv = 0, A·v = v − 1(πᵀv) = v")
def check_spectrum(answers):
    for V, seed in ((5, 0), (8, 1)):
        z = 2.0 * torch.randn(V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        want = torch.linalg.eigvals(jacobian(z)).real.sort().values
        problem = compare(torch.tensor(answers.spectrum(V), dtype=torch.float64), want, 1e-9,
                          "eigenvalues from a float64 eigensolver")
        if problem:
            return f"V = {V}: {problem}"


@exercise(2, "when is A symmetric?", "(1πᵀ)ᵀ = π1ᵀ: the two are equal only when every entry of π is the same")
def check_symmetric(answers):
    for V in (4, 7):
        z = answers.symmetric_logits(V)
        problem = compare(torch.as_tensor(z).shape[0], V, 0, "one logit per class")
        A = jacobian(torch.as_tensor(z))
        problem = problem or compare(A, A.T, 1e-12, "A must equal its transpose up to rounding")
        if problem:
            return f"V = {V}: {problem}"


@exercise(3, "lower a likely class", "Δ log π = A·Δz, and row i of A is e_i − π: take its dot product with −e_k")
def check_lower(answers):
    z = 2.0 * torch.randn(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    k = int(z.argmax())
    want = jacobian(z) @ (-torch.eye(8, dtype=torch.float64)[k])
    return compare(answers.lower_likely_class(z), want, 1e-12, "exact to rounding in float64")


CHECKS = [check_spectrum, check_symmetric, check_lower]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
