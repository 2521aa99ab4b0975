"""Exercises a learner can check: every exercise file's checks pass on its worked solutions, fail on the untouched
stubs with a hint, and fail on a wrong answer with what is wrong."""
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import skip_without_smollm2

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = sorted(p for p in (ROOT / "lessons" / "exercises").glob("[0-9][0-9]_*.py"))
sys.path.insert(0, str(ROOT / "lessons" / "exercises"))
from check import checks_of, run_checks  # noqa: E402

sys.path.pop(0)


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"x_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", EXERCISES, ids=[p.stem for p in EXERCISES])
def test_solutions_pass_and_stubs_fail_with_a_hint(path, lesson_workdir, monkeypatch, capsys):
    skip_without_smollm2(path)
    monkeypatch.setenv("TINYLD_FAST", "1")  # the lessons' fast models, cached in the folder the lessons run in
    monkeypatch.chdir(lesson_workdir)
    solution = ROOT / "lessons" / "solutions" / path.name
    assert solution.exists(), f"no worked solution for {path.name}"
    assert (ROOT / "lessons" / path.name).exists(), "an exercise file belongs to a lesson of the same name"
    checks = checks_of(path.stem)
    assert all(run_checks(checks, load(solution)))
    assert not any(run_checks(checks, load(path)))  # the stubs as shipped
    out = capsys.readouterr().out
    assert out.count("hint: ") == len(checks) and out.count("not answered yet") == len(checks)


SOLVED = [p for p in EXERCISES if hasattr(load(ROOT / "lessons" / "solutions" / p.name), "MISTAKES")]


@pytest.mark.parametrize("path", SOLVED, ids=[p.stem for p in SOLVED])
def test_the_common_mistakes_a_solution_lists_are_caught(path, lesson_workdir, monkeypatch, capsys):
    """A solution file's MISTAKES are (exercise, {function: wrong answer}, what the check must say): each, put in
    place of the worked answer, fails its own check with that message and leaves the other checks passing."""
    skip_without_smollm2(path)
    monkeypatch.setenv("TINYLD_FAST", "1")
    monkeypatch.chdir(lesson_workdir)
    solution = load(ROOT / "lessons" / "solutions" / path.name)
    checks = checks_of(path.stem)
    numbers = [check.exercise[0] for check in checks]
    assert solution.MISTAKES, "an empty list of mistakes tests nothing"
    for number, wrong, says in solution.MISTAKES:
        answers = types.SimpleNamespace(**{**vars(solution), **wrong})
        capsys.readouterr()
        verdicts = run_checks(checks, answers)
        out = capsys.readouterr().out
        assert verdicts == [n != number for n in numbers], (number, out)
        assert says in out, (number, says, out)


def test_a_wrong_answer_is_caught_with_what_is_wrong(capsys):
    """Lesson 1's checks on plausible mistakes: the eigenvalues all ones, a random z, a sign flipped."""
    wrong = types.SimpleNamespace(spectrum=lambda V: [1.0] * V, symmetric_logits=lambda V: torch.randn(V),
                                  lower_likely_class=lambda z: torch.eye(len(z))[int(z.argmax())]
                                  - torch.softmax(z, -1).max())
    assert run_checks(checks_of("01_softmax_jacobian"), wrong) == [False, False, False]
    out = capsys.readouterr().out
    assert "off by 1 (allowed 1e-09" in out and "A must equal its transpose" in out
    nan = types.SimpleNamespace(spectrum=lambda V: [float("nan")] * V, symmetric_logits=lambda V: torch.zeros(V + 1),
                                lower_likely_class=lambda z: torch.zeros(3))
    assert run_checks(checks_of("01_softmax_jacobian"), nan) == [False, False, False]
    out = capsys.readouterr().out
    assert "NaN or infinite" in out and "the shape is (3,), expected (8,)" in out
