"""Worked solutions to the exercises of lesson 4 — one step, predicted vs actual.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/04_one_step.py``.
"""
import sys
from pathlib import Path

import torch

from tinyld.data import make_batch
from tinyld.dynamics import one_step, step_size_for
from tinyld.updates import SFTUpdate, lm_rows

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def relative_error(model, update, ro, target: float) -> float:
    """The prediction is the first-order term, so pred − actual is the O(η²) remainder, while the change itself is
    O(η): their ratio grows like η. The step size is proportional to the target, so four times the target gives
    about four times the relative error: in our runs 1.5e-3 → 6.4e-3 with the fast-mode model, 5.9e-3 → 2.3e-2
    with the full-mode one."""
    return one_step(model, update, ro, step_size_for(model, update, ro, target)).err_seq


def dpo_per_position(model, dpo, ro, eta: float, seq: int) -> torch.Tensor:
    """The shared prefix "judy lives in" cancels between the two halves of DPO, so y⁻'s change comes from where
    the answers part: the answer word "cairo" (y⁻'s 4th token), where G⁻ pushes at nearly full strength because
    π(cairo) is small, carries the largest change, a fall. The first token "judy" moves too, the same at every
    answer to this prompt (lesson 4: the first position is shared), but less."""
    return one_step(model, dpo, ro, eta).per_position(seq)


def wrong_answer_change(model, tok, item, eta: float) -> float:
    """y⁻ = "judy lives in cairo ." shares "judy lives in" with y⁺, and the sign depends on where y⁻'s residual is
    large. The fast-mode model is unsure of the shared start (π(judy) ≈ 0.002 at the first position), so the step
    acts mostly there and lifts y⁺ nearly as much as y⁻: +0.095 against +0.102 in our runs. The
    full-mode model is sure of it (π(judy) ≈ 0.86), so the step acts mostly at "cairo", and y⁺ moves only through
    K: in our runs it fell (−0.015), almost all of it at its first token. Training on a wrong answer can raise or
    lower the right one; the shared prefix and the residual decide."""
    rows_r = lm_rows(make_batch(tok, [item.prompt], [item.rejected]))
    observed = lm_rows(make_batch(tok, [item.prompt], [item.chosen]))
    return one_step(model, SFTUpdate(rows_r), observed, eta).actual_seq[0].item()


def _stays_on_chosen(model, tok, item, eta):
    rows_c = lm_rows(make_batch(tok, [item.prompt], [item.chosen]))
    return one_step(model, SFTUpdate(rows_c), rows_c, eta).actual_seq[0].item()


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"relative_error": lambda model, update, ro, target: one_step(model, update, ro, step_size_for(
        model, update, ro, target)).err_full}, "off by"),  # the full-vocabulary error, not the sequences'
    (2, {"dpo_per_position": lambda model, dpo, ro, eta, seq: one_step(model, dpo, ro, eta).per_position()},
     "off by"),  # per_position() without the sequence: y⁺'s positions (sequence 0), not y⁻'s
    (3, {"wrong_answer_change": _stays_on_chosen}, "off by"),  # the update still trains on y⁺
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("04_one_step"), sys.modules[__name__])) else 1)
