"""Exercises of lesson 11 — forecasting test accuracy from training: pre-memorization accuracy.

Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    python lessons/exercises/11_pre_memorization.py

The checks use small made-up tables of accuracies and perplexities (no training), and compare each answer with an
independent computation: the library's ``pm_curve``, a least-squares solve (``torch.linalg.lstsq``), and the known
written form of every sample. A failed check prints a hint. Worked solutions:
``lessons/solutions/11_pre_memorization.py``.
"""
import sys
from pathlib import Path

import torch

from tinyld.experiments.forecasting import pm_curve
from tinyld.reasoning import Arithmetic

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402


def pm_train_accuracy(acc: torch.Tensor, ppl: torch.Tensor, tau: float) -> torch.Tensor:
    """Exercise 1: the pre-memorization train accuracy at every checkpoint, shape (T,), from the sampled accuracy
    ``acc`` (T, N) and the reference solution's perplexity ``ppl`` (T, N) of N training examples at T checkpoints
    (in training order). An example is memorized at k when ppl < exp(e^τ); PM_t(i) = min(max_{k ≤ t}
    acc_k(i)·[i not memorized at k], acc_t(i)); the dataset value is the mean over i.

    Predict first: at τ = −1.7 (perplexity 1.20) instead of −2.3 (1.105), a model that knows the arithmetic but
    not the reference form (perplexity near 1.17) counts as memorized. Does PM move away from train accuracy, or
    closer? And at τ = −3.0? (In the lesson, ``pm_curve(points, tau)`` gives the same curve: compare your answer
    with it, then refit R².)"""
    raise NotImplementedError


def fit_residuals(xs: list[float], ys: list[float], new_xs: list[float], new_ys: list[float]) -> torch.Tensor:
    """Exercise 2: fit ys ≈ a + b·xs by least squares (the lesson's OLS line of test accuracy on PM train accuracy)
    and return how far each new point lies above (+) or below (−) that line: new_y − (a + b·new_x), shape (M,).

    Predict first: add the run ``"middle": (128, 1e-3, 10)`` to ``RUNS`` in the lesson (128 questions, a cooler
    learning rate than both others). Do its points fall on the line fitted to the other two runs, above it (better
    test accuracy than PM forecasts) or below it?"""
    raise NotImplementedError


def trace_accuracy(samples: list[list[str]], references: list[str]) -> torch.Tensor:
    """Exercise 3: grade by the reference *form*: the fraction of each question's sampled solutions that equal its
    reference solution word for word, shape (N,). ``samples[i]`` are the sampled solutions to question i (as
    ``tinyld.evaluate.sampled_answers`` returns them), ``references[i]`` its training example's ``chosen``.

    Predict first: how does this "trace accuracy" compare with the grader's accuracy and with PM, for a model that
    has learned the arithmetic, and for one that has copied its training solutions?"""
    raise NotImplementedError


def tables():
    """(acc, ppl) pairs of (T, N) tables: a hand-made one (5 checkpoints, 6 examples: perplexities that cross the
    thresholds of τ = −1.7, −2.3 and −3.0 at different checkpoints, one stuck near 1.17, one never memorized, an
    accuracy that drops) and a seeded random one (8 checkpoints, 16 examples)."""
    acc = torch.tensor([[0.2, 0.0, 0.4, 0.0, 0.6, 0.2],
                        [0.4, 0.2, 0.8, 0.0, 0.4, 0.6],
                        [0.6, 0.4, 0.6, 0.2, 0.8, 0.4],
                        [0.8, 0.4, 1.0, 0.2, 0.6, 0.6],
                        [1.0, 0.6, 0.8, 0.4, 1.0, 0.8]], dtype=torch.float64)
    ppl = torch.tensor([[1.60, 1.70, 1.50, 1.80, 1.21, 1.19],
                        [1.35, 1.40, 1.30, 1.60, 1.10, 1.18],
                        [1.18, 1.25, 1.19, 1.40, 1.06, 1.15],
                        [1.12, 1.17, 1.09, 1.30, 1.045, 1.13],
                        [1.04, 1.16, 1.03, 1.25, 1.02, 1.12]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    racc = torch.randint(0, 6, (8, 16), generator=g).double() / 5  # 5 samples per question
    rppl = 1 + 0.5 * torch.rand(8, 16, generator=g, dtype=torch.float64)  # 1.0 … 1.5
    return [(acc, ppl), (racc, rppl)]


@exercise(1, "PM train accuracy at any τ", "the threshold is exp(exp(τ)); keep a running maximum over checkpoints "
          "of the accuracy where the example is not memorized (0 where it is), cap it by the accuracy now, and "
          "average over the examples")
def check_pm(answers):
    for which, (acc, ppl) in zip(("the hand-made table", "the random table"), tables()):
        for tau in (-1.7, -2.3, -3.0):
            got = answers.pm_train_accuracy(acc.clone(), ppl.clone(), tau)
            points = [{"acc": a.tolist(), "ppl": p.tolist()} for a, p in zip(acc, ppl)]
            problem = compare(got, torch.tensor(pm_curve(points, tau), dtype=torch.float64), 1e-12,
                              "the library's pm_curve, exact to rounding in float64")
            if problem:
                return f"{which}, τ = {tau}: {problem}"


def scatter(seed: int, n: int):
    """n points (PM train accuracy, test accuracy) around a line, with noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g, dtype=torch.float64) * 0.8
    return x, 0.08 + 0.7 * x + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)


@exercise(2, "where new points fall", "the least-squares slope is Σ(x − x̄)(y − ȳ) / Σ(x − x̄)² and the line goes "
          "through (x̄, ȳ); a point above the line has a positive residual")
def check_residuals(answers):
    for seed, n, m in ((0, 14, 6), (1, 30, 10)):
        xs, ys = scatter(seed, n)
        new_x, new_y = scatter(seed + 100, m)
        new_y = new_y + 0.1  # a run that generalises better than the others
        got = answers.fit_residuals(xs.tolist(), ys.tolist(), new_x.tolist(), new_y.tolist())
        design = torch.stack([torch.ones(n, dtype=torch.float64), xs], 1)  # (n, 2): [1, x]
        a, b = torch.linalg.lstsq(design, ys[:, None]).solution[:, 0]
        problem = compare(got, new_y - (a + b * new_x), 1e-10, "a float64 least-squares solve agrees to rounding")
        if problem:
            return f"{n} fitted points, {m} new ones: {problem}"


def samples_of(world: Arithmetic, n: int):
    """(samples, references, forms) for the first n training questions: five samples per question, each written in
    a form we know (``forms[i][k]``: the form index, or None for a wrong final answer). Some are in the reference
    form, some in another form (graded correct all the same), one has a wrong answer."""
    problems = world.pool()[:n]
    refs = world.train_examples(problems)
    samples, forms = [], []
    for i, (p, ex) in enumerate(zip(problems, refs)):
        form = ex.meta["form"]
        other = form ^ 8 ^ (i % 8)  # the other step order (bit 3), so the text differs; the phrasings vary
        fs = [form] * (i % 4) + [other] * (3 - i % 4) + [None, form if i % 3 == 0 else other]  # 0 … 4 copies
        wrong = " ".join(p.steps(form)[:2] + [f"the answer is {p.answer + 1} ."])  # the reference's steps, a wrong end
        samples.append([wrong if f is None else p.solution(f) for f in fs])
        forms.append(fs)
    return samples, [ex.chosen for ex in refs], forms


@exercise(3, "trace accuracy", "compare each sample with the reference solution itself, not with the grader: a "
          "correct answer written in another form does not count, and neither does the reference's wording with "
          "another final answer")
def check_trace(answers):
    world = Arithmetic(seed=0)
    samples, refs, forms = samples_of(world, 8)
    got = answers.trace_accuracy(samples, refs)
    ref_forms = [ex.meta["form"] for ex in world.train_examples(world.pool()[:8])]
    want = torch.tensor([sum(f == r for f in fs) / len(fs) for fs, r in zip(forms, ref_forms)], dtype=torch.float64)
    return compare(got, want, 1e-12, "the fraction of samples written in the reference form, known by construction")


CHECKS = [check_pm, check_residuals, check_trace]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
