"""Exercises of lesson 0 — the foundation: valley depth, causality, exact resumption.

Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    TINYLD_FAST=1 python lessons/exercises/00_foundation.py    # on the fast-mode models, as in the lab

Each answer is checked against an independent computation (PyTorch's cross-entropy, the model's own logits with a
token changed, an uninterrupted training run), and a failed check prints a hint. The checks use the lesson's
pretrained model (``pretrained(seed=0, steps=400)`` with TINYLD_FAST=1, else 3000 steps). Worked solutions:
``lessons/solutions/00_foundation.py``.
"""
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyld import GPT, GPTConfig
from tinyld.data import TextStream, make_batch
from tinyld.train import TrainConfig, Trainer
from tinyld.world import World

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, lesson_model, run_checks  # noqa: E402


def valley(model, ids: torch.Tensor) -> float:
    """Exercise 1: the mean log π per predicted token of the token sequences ``ids`` (N, L): the logits at position
    t score the token at t + 1, so each row has L − 1 predicted tokens. With random ``ids`` this is the valley
    depth. Predict first: is the valley of a model with less pretraining (a fresh one, 0 steps) deeper or
    shallower than the lesson's?"""
    raise NotImplementedError


def unchanged_prefix(tok, prompt: str, response: str) -> int:
    """Exercise 2: x = tok.encode(prompt + " " + response). Change the *first response token* of x to get y. Return
    the number k of leading positions whose logits must stay equal: model(x)[0, :k] equals model(y)[0, :k] for any
    causal model, while the logits at position k may change."""
    raise NotImplementedError


def resumed(make_model, stream, tok, save_at: int, total: int, folder: str) -> torch.nn.Module:
    """Exercise 3: train ``make_model()`` on ``stream`` for ``save_at`` steps with ``TrainConfig(steps=save_at,
    out_dir=folder, progress=False)`` (which saves ``folder/last.pt``), then build a new Trainer from that file
    with ``Trainer.resume`` and train it up to ``total`` steps in all. Return the resumed trainer's model."""
    raise NotImplementedError


_cache = {}


def setup():
    """The lesson's model and world, cached: (world, tok, model in float64). Fast mode (TINYLD_FAST=1)
    gives the fast model."""
    if "model" not in _cache:
        world, tok, model = lesson_model()
        _cache["model"] = world, tok, model.double().eval()
    return _cache["model"]


def fresh(V: int) -> GPT:
    """The lesson's fresh tiny GPT (seed 0): the start of every pretraining run."""
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=V))


@exercise(1, "valley depth by hand", "the logits at position t are the model's guess for the token at t + 1: "
          "the first token of a row is never scored, and the logits of the last position score nothing")
def check_valley(answers):
    world, tok, model = setup()
    ids = torch.randint(3, tok.vocab_size, (16, 12), generator=torch.Generator().manual_seed(0))  # no specials
    for name, m in (("a fresh model (0 steps)", fresh(tok.vocab_size).double().eval()), ("the lesson's model", model)):
        got = answers.valley(m, ids)
        with torch.no_grad():
            logits = m(ids[:, :-1])  # (N, L-1, V)
            want = -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        problem = compare(got, want, 1e-9, "the same float64 log-probs, averaged in another order")
        if problem:
            return f"{name}: {problem}"


@exercise(2, "causality from the other side", "position t's logits see the tokens at positions ≤ t only; at which "
          "position of x is the first response token?")
def check_prefix(answers):
    world, tok, model = setup()
    for item in (world.train_items()[0], world.train_items()[1], world.test_items()[2]):
        got = answers.unchanged_prefix(tok, item.prompt, item.chosen)
        x = torch.tensor([tok.encode(item.prompt + " " + item.chosen)])  # (1, T)
        y = x.clone()
        p = int(make_batch(tok, [item.prompt], [item.chosen]).mask[0].nonzero()[0]) + 1  # 1st response token
        y[0, p] = tok.encode("zoe")[0] if x[0, p] != tok.encode("zoe")[0] else tok.encode("ivan")[0]
        with torch.no_grad():
            same = (model(x)[0] == model(y)[0]).all(-1)  # (T,) positions whose logits did not move
        want = int(same.long().cumprod(0).sum())  # the first position that moved
        problem = compare(got, want, 0, "a whole number of positions")
        if problem:
            return f"{item.prompt!r} + {item.chosen!r}: {problem}"


@exercise(3, "resume from another step", "a new Trainer on the saved weights alone forgets AdamW's moments and the "
          "step count: use Trainer.resume, whose steps= is the total the run ends at, like TrainConfig.steps")
def check_resumed(answers):
    world = World(0)
    tok = world.tokenizer()
    stream = TextStream(tok, world.pretrain_docs(), block_size=64, batch_size=8, seed=0)
    save_at, total = 3, 5
    with tempfile.TemporaryDirectory() as d:
        got = answers.resumed(lambda: fresh(tok.vocab_size), stream, tok, save_at, total, d)
    if "one_go" not in _cache:
        one_go = Trainer(fresh(tok.vocab_size), stream, TrainConfig(steps=total, progress=False), tok)
        one_go.run()
        _cache["one_go"] = torch.cat([p.detach().flatten() for p in one_go.model.parameters()])
    return compare(torch.cat([p.detach().flatten() for p in got.parameters()]), _cache["one_go"], 0,
                   f"bit for bit: the uninterrupted {total}-step run (the batch at step s depends only on the seed "
                   "and s, and the checkpoint holds the optimizer state and the RNG)")


CHECKS = [check_valley, check_prefix, check_resumed]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
