"""Worked solutions to the exercises of lesson 14 — a real LLM: SmolLM2-135M-Instruct.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/14_real_llm.py``.
"""
import sys
from pathlib import Path

import torch

from tinyld.data import make_batch

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def scored(model, tok, question: str, answer: str):
    """The chat pair as a batch of one, and its logits (1, T, V)."""
    b = make_batch(tok, [tok.chat([{"role": "user", "content": question}])], [answer])
    with torch.no_grad():
        return b, model(b.idx)


def mean_answer_logprob(model, tok, question: str, answer: str) -> float:
    """The targets hold the next token at each position (−100 on the prompt), so one gather reads log π of every
    answer token. "Paris." after a question the model answers itself is shallow; a fact of the synthetic world
    ("judy lives in delhi .") is several nats per token deeper: the model has never seen it."""
    b, z = scored(model, tok, question, answer)
    lp = torch.log_softmax(z, -1).gather(-1, b.targets.clamp(min=0)[..., None])[..., 0]  # (1, T)
    return ((lp * b.mask).sum() / b.mask.sum()).item()


def sft_residual(model, tok, question: str, answer: str) -> torch.Tensor:
    """−log π(y|x) = Σ_t −log softmax(z_t)[y_t], and ∂/∂z_t of −log softmax(z_t)[y_t] is π_t − e_{y_t}: the same
    residual as on the world's models (lesson 2), now over 49152 tokens."""
    b, z = scored(model, tok, question, answer)
    pi = torch.softmax(z[b.mask], -1)  # (N, V)
    return pi - torch.nn.functional.one_hot(b.targets[b.mask], pi.shape[-1]).to(pi.dtype)


def argmax_share(lp_before: torch.Tensor, lp_after: torch.Tensor, pushed: int) -> float:
    """A negative step takes mass from the pushed token and, unless it is the peak, from most other tokens too;
    the peak gains (lesson 8). The share says how much of the others' loss the peak took."""
    pi, after = lp_before.exp(), lp_after.exp()
    top = int(pi.argmax())
    others = torch.ones_like(pi, dtype=torch.bool)
    others[[pushed, top]] = False
    return ((after[top] - pi[top]) / (pi - after)[others].sum()).item()


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"mean_answer_logprob": lambda model, tok, q, a: mean_answer_logprob(model, tok, q, a + "\n")},
     "off by"),  # a different answer: the EOS is appended by make_batch, not written into the text
    (2, {"sft_residual": lambda model, tok, q, a: -sft_residual(model, tok, q, a)}, "off by"),  # the sign of G
    (3, {"argmax_share": lambda lp0, lp1, y: share_of_all(lp0, lp1)}, "off by"),  # the pushed token counted too
]


def share_of_all(lp_before: torch.Tensor, lp_after: torch.Tensor) -> float:
    """The mistake: divide by what every token but the top lost. Probability is conserved, so that is the top's
    gain itself and the share is always 1."""
    pi, after = lp_before.exp(), lp_after.exp()
    top = int(pi.argmax())
    rest = torch.arange(len(pi)) != top
    return ((after[top] - pi[top]) / (pi - after)[rest].sum()).item()

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("14_real_llm"), sys.modules[__name__])) else 1)
