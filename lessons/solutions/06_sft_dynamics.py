"""Worked solutions to the exercises of lesson 6 — what SFT does to every other answer.

Run this file to see them pass the same checks as your answers: ``python lessons/solutions/06_sft_dynamics.py``.
"""
import sys
from pathlib import Path

import torch

from tinyld.data import encode_example

sys.path.insert(0, str(Path(__file__).parents[1] / "exercises"))
from check import checks_of, run_checks  # noqa: E402


def position_logprobs(model, tok, prompt: str, response: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π at every response position (M, V), the response's tokens (M,)), teacher-forced. χ = [x; y; EOS]; the
    model reads χ without its last token, and position t predicts token t + 1, so the positions from |x| − 1 on
    predict y's tokens and the EOS."""
    ids, n = encode_example(tok, prompt, response)  # χ and |x|
    with torch.no_grad():
        logits = model.eval()(torch.tensor([ids[:-1]]))[0]  # (T, V)
    return torch.log_softmax(logits[n - 1:], -1), torch.tensor(ids[n:])  # (M, V), (M,)


def family_means(model, tok, probes) -> torch.Tensor:
    """One number per family, averaged over the training prompts only: the claims are about D_prob, the prompts
    SFT trains on (the held-out prompts get their own dashed curves in Fig. 3). For y* the token at each position
    is the argmax given y⁺'s prefix, so log π(y*) ≥ log π(y⁺) term by term: y* is the likeliest response along
    y⁺'s positions, and it approaches 0 from below once y⁺'s tokens become the argmax.

    Compare the change of these means after an epoch of plain SGD and after an epoch of AdamW: the first-order
    picture −η·A·K·G describes the SGD step (lesson 4), while Adam rescales every parameter's step (its first
    step is close to lr·sign(gradient) for every parameter), so the two can move a family in opposite
    directions."""
    train = probes.split("train")
    means = []
    for fam in probes.families:
        values = []
        for p in train:
            if fam != "star" and fam not in p.responses:
                continue  # y_init is missing where the model's first answer was empty
            logp, y = position_logprobs(model, tok, p.prompt, p.responses["chosen" if fam == "star" else fam])
            values.append(logp.amax(-1).sum() if fam == "star" else logp.gather(-1, y[:, None]).sum())
        means.append(torch.stack(values).mean())
    return torch.stack(means)


def token_changes(before, after, tok, prompt: str, response: str) -> torch.Tensor:
    """log π(y|x) is a sum over y's tokens, so its change splits exactly into one change per token. For `first`
    (y⁺'s first word, then a fluent sentence) the first token is read with the same context x_u as y⁺'s first
    token, and it is the same token: it changes exactly as y⁺'s first token does. The second is read in y⁺'s
    second context but is another token: there the step on y⁺ pushes y⁺'s token up and, through A, every other
    token down, while the rest of the batch adds its own pushes. From the third token on, `first` sits in contexts
    y⁺ never had, and moves only as far as K couples them with the contexts SFT trains on, such as the answer
    format every hard-mode y⁺ shares: "a story sentence follows the fact"."""
    lb, y = position_logprobs(before, tok, prompt, response)
    la, _ = position_logprobs(after, tok, prompt, response)
    return (la - lb).gather(-1, y[:, None])[:, 0]


def end_after_fact(model, tok, probes) -> torch.Tensor:
    """The pretraining text has question/answer pages that end after the fact, so the base model's answer tends
    to end there too: the greedy y_init is usually one sentence, ended by "." and EOS. In hard mode, every y_u⁺ goes on
    after its fact with a story sentence: at that position each SFT step pushes the story's first token up and,
    through A, every other token down, EOS included. So this log-prob falls during hard-mode SFT, and the EOS
    at the end of the greedy y_init sits at a position of the same kind (a sentence has just ended):
    ``token_changes`` on y_init shows how much of its fall happens there."""
    out = []
    for p in probes.split("train"):
        words = p.responses["chosen"].split()
        logp, _ = position_logprobs(model, tok, p.prompt, " ".join(words[: words.index(".") + 1]))
        out.append(logp[-1, tok.eos_id])  # the last position predicts what follows the "."
    return torch.stack(out)


# Common mistakes, each caught by its check: (exercise, the wrong answer, what the check says).
MISTAKES = [
    (1, {"family_means": lambda model, tok, probes: family_means(model, tok, type(probes)(
        [type(p)(p.prompt, p.responses, "train", p.meta) for p in probes.probes]))},
     "off by"),  # the held-out prompts averaged in as well
    (2, {"token_changes": lambda before, after, tok, prompt, response: token_changes(
        before, after, tok, prompt, response)[:-1]},
     "the shape is"),  # the EOS left out: log π(y|x) scores the end of the response too
    (3, {"end_after_fact": lambda model, tok, probes: end_after_fact(model, tok, probes).exp()},
     "off by"),  # the probability instead of its log
]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(checks_of("06_sft_dynamics"), sys.modules[__name__])) else 1)
