"""The checker every exercise file uses: a screen for NaN, infinities and shape first, then the comparison with an
independent computation, with a tolerance that says why; a failed check prints a hint.

    python lessons/exercises/01_softmax_jacobian.py     # check your answers (the stubs fail, with hints)
    python lessons/solutions/01_softmax_jacobian.py     # the worked solutions, through the same checks
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable

import torch

from tinyld.runtime import fast_mode

HERE = Path(__file__).parent
fast = fast_mode  # fast mode, as in the lessons (TINYLD_FAST=1), read at each call: checks then use the fast models


def lesson_model(steps: int | None = None):
    """(world, tokenizer, model): the pretrained world model the lessons use (400 steps in fast mode, else 3000),
    cached in tinyld_out/cache of the folder you run from, so a model the lesson made is reused."""
    from tinyld.pretrained import pretrained
    return pretrained(seed=0, steps=steps or (400 if fast() else 3000))


def compare(got, want, atol: float, why: str) -> str | None:
    """None when ``got`` matches ``want`` within ``atol`` (``why`` says why that tolerance), else what is wrong."""
    got = torch.as_tensor(got, dtype=torch.float64) if not isinstance(got, torch.Tensor) else got.double()
    want = torch.as_tensor(want, dtype=torch.float64) if not isinstance(want, torch.Tensor) else want.double()
    if got.shape != want.shape:
        return f"the shape is {tuple(got.shape)}, expected {tuple(want.shape)}"
    if not bool(torch.isfinite(got).all()):
        return "it holds NaN or infinite values"
    err = (got - want).abs().max().item() if got.numel() else 0.0
    if err > atol:
        at = int((got - want).abs().flatten().argmax())
        where = "" if got.dim() == 0 else f" at {tuple(int(i) for i in torch.unravel_index(torch.tensor(at), got.shape))}"
        g, w = got.flatten()[at].item(), want.flatten()[at].item()
        return f"it is off by {err:.3g} (allowed {atol:g}: {why}); largest miss{where}: got {g:.6g}, expected {w:.6g}"
    return None


def exercise(number: int, title: str, hint: str):
    """Mark a check function: ``check(answers) -> problem or None`` for exercise ``number``."""
    def mark(fn: Callable):
        fn.exercise = (number, title, hint)
        return fn
    return mark


def run_checks(checks: list[Callable], answers) -> list[bool]:
    """Run each check on the module ``answers``; print ✓ or ✗ with its hint. Returns the verdicts."""
    verdicts = []
    for check in checks:
        number, title, hint = check.exercise
        try:
            problem = check(answers)
        except NotImplementedError:
            problem = "not answered yet: fill in the function"
        except Exception as e:  # a learner's bug: say what it was, keep checking the others
            problem = f"it raised {type(e).__name__}: {e}"
        verdicts.append(problem is None)
        print(f"{'✓' if problem is None else '✗'} exercise {number}: {title}"
              + ("" if problem is None else f"\n    {problem}\n    hint: {hint}"))
    print(f"{sum(verdicts)} of {len(verdicts)} exercises pass")
    return verdicts


def checks_of(lesson: str) -> list[Callable]:
    """The checks of ``lessons/exercises/<lesson>.py``, loaded by path (lesson files start with digits)."""
    spec = importlib.util.spec_from_file_location(f"exercises_{lesson}", HERE / f"{lesson}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CHECKS


if __name__ == "__main__":
    sys.exit("run an exercise file, e.g. python lessons/exercises/01_softmax_jacobian.py")
