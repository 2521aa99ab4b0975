"""Worked solutions to the exercises of lesson 0 — the foundation.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/00_foundation.py``.
"""
import sys
from pathlib import Path

import torch

from tinyld.train import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


@torch.no_grad()
def valley(model, ids: torch.Tensor) -> float:
    """Teacher forcing: the logits at position t have seen ids[:, :t+1] and score ids[:, t+1]. So the logits of
    ids[:, :-1] score ids[:, 1:], and the first token of each row is never scored.

    A fresh model's logits are nearly equal, so it gives every token about 1/V: its valley is about −log V ≈ −4.9
    nats, as shallow as a valley gets. Pretraining makes the model sure of the world's text, and that certainty
    is paid for by the text it does not expect: random words drop to about −19 nats/token after 400 steps, and
    deeper after 3000. A model with less pretraining has a *shallower* valley (a larger, less negative number);
    ``pretrained(seed=0, steps=100)`` lies in between."""
    logp = torch.log_softmax(model(ids[:, :-1]), -1)  # (N, L-1, V)
    return logp.gather(-1, ids[:, 1:, None]).mean().item()  # mean over the N·(L−1) predicted tokens


def unchanged_prefix(tok, prompt: str, response: str) -> int:
    """The word tokenizer gives the prompt p tokens, so x's first response token sits at position p. The logits at
    position t see the tokens at positions ≤ t only, so positions 0 … p − 1 cannot see the change: k = p.

    Position p − 1 is the one whose logits *score* the first response token, but they do not see it: the loss of
    that position changes, its logits do not."""
    return len(tok.encode(prompt))


def resumed(make_model, stream, tok, save_at: int, total: int, folder: str) -> torch.nn.Module:
    """The checkpoint holds the weights, the AdamW moments, the step counter and the RNG state, and the batch of
    step s depends only on (seed, s). So the resumed trainer takes exactly the updates the uninterrupted run takes
    from step ``save_at`` on, and the weights agree bit for bit, wherever the break falls. ``steps`` in resume is
    the total to reach, as in TrainConfig."""
    Trainer(make_model(), stream, TrainConfig(steps=save_at, out_dir=folder, progress=False), tok).run()
    trainer = Trainer.resume(f"{folder}/last.pt", stream, tok, steps=total)
    trainer.run()
    return trainer.model


def _no_shift(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(ids), -1).gather(-1, ids[..., None]).mean().item()


def _resume_steps_left(make_model, stream, tok, save_at, total, folder):
    Trainer(make_model(), stream, TrainConfig(steps=save_at, out_dir=folder, progress=False), tok).run()
    trainer = Trainer.resume(f"{folder}/last.pt", stream, tok, steps=total - save_at)
    trainer.run()
    return trainer.model


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"valley": _no_shift}, "off by"),  # each token scored by the logits at its own position, which saw it
    (2, {"unchanged_prefix": lambda tok, prompt, response: len(tok.encode(prompt)) - 1},
     "off by 1"),  # stops before the position that scores the changed token: its logits do not see it
    (3, {"resumed": _resume_steps_left}, "off by"),  # steps= read as the steps still to take: the run stops early
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("00_foundation"), sys.modules[__name__])) else 1)
