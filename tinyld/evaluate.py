"""Measurements on a model: confidence on text, valley depth, response log-probs, greedy answers.

Valley depth is the mean log-prob per token that the model gives to *random* token sequences. A model that
puts e^-30 on tokens it does not expect has deep valleys. The squeezing theorem holds for any distribution, but
in this project's small-scale trials valley depth decided whether off-policy DPO squeezed visibly
(lessons/NOTES.md §5), so report it beside every squeezing result.
"""
from __future__ import annotations

from typing import Sequence

import torch

from tinyld.data import collate, make_batch
from tinyld.losses import sequence_logprob, token_logprobs
from tinyld.runtime import TinyldError, check_int, check_number, check_seed, first_nonfinite


def check_healthy(model) -> None:
    """Refuse a model whose weights hold NaN or inf: it has no meaningful measurements."""
    bad = first_nonfinite(model)
    if bad:
        raise TinyldError(f"the model's parameter {bad!r} holds NaN or inf: a diverged model has no meaningful "
                          "measurements; load a good checkpoint")


def _texts(name: str, texts) -> list[str]:
    """``texts`` as a list of non-empty strings, or one clear error."""
    if texts is None or isinstance(texts, str) or not hasattr(texts, "__iter__"):
        raise TinyldError(f"{name} must be a non-empty list of non-empty strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise TinyldError(f"{name} must be a non-empty list of non-empty strings")
    return texts


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def text_stats(model, tok, texts: Sequence[str]) -> dict:
    """Mean top-1 probability and mean log-prob per token over every predicted token of ``texts``."""
    texts = _texts("texts", texts)
    check_healthy(model)
    model.eval()
    seqs = [(tok.encode(t) + [tok.eos_id], 1) for t in texts]  # score every token after the first
    b = collate(seqs, tok.pad_id, model.config.block_size).to(_device(model))
    logits = model(b.idx)  # (B, T, V)
    top1 = logits.softmax(-1).amax(-1)  # (B, T)
    n = b.mask.sum()
    return {"top1": (top1 * b.mask).sum().item() / n.item(),
            "logp_per_token": token_logprobs(logits, b.targets).sum().item() / n.item(),
            "tokens": int(n)}


@torch.no_grad()
def valley_depth(model, tok, n_seqs: int = 64, length: int = 16, seed: int = 0) -> float:
    """Mean log π per token of uniformly random token sequences (ids ≥ 3 for the word tokenizer: no specials)."""
    check_int("n_seqs", n_seqs, 1)
    check_int("length", length, 2, model.config.block_size + 1)
    check_seed("seed", seed)
    check_healthy(model)
    model.eval()
    lo = 3 if getattr(tok, "name", "") == "word" else 0
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(lo, model.config.vocab_size, (n_seqs, length), generator=g).to(_device(model))  # (N, L)
    logits = model(ids[:, :-1])  # (N, L-1, V)
    return token_logprobs(logits, ids[:, 1:]).mean().item()


@torch.no_grad()
def response_logprobs(model, tok, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64):
    """log π(y | x) for each pair, summed over response tokens (EOS included): (N,) tensor on the CPU."""
    check_int("batch_size", batch_size, 1)
    prompts, responses = _texts("prompts", prompts), _texts("responses", responses)
    if len(responses) != len(prompts):
        raise TinyldError(f"give one response per prompt: {len(prompts)} prompts but {len(responses)} responses")
    check_healthy(model)
    model.eval()
    out = []
    for i in range(0, len(prompts), batch_size):
        b = make_batch(tok, prompts[i:i + batch_size], responses[i:i + batch_size], model.config.block_size)
        b = b.to(_device(model))
        out.append(sequence_logprob(model(b.idx), b.targets).cpu())  # (b,)
    return torch.cat(out)


@torch.no_grad()
def greedy_answers(model, tok, prompts: Sequence[str], max_new_tokens: int = 12) -> list[str]:
    """The model's greedy continuation of each prompt, up to EOS. Prompts of the same token length are decoded
    together (the model is causal and nothing is padded, so the answers are those of one-by-one decoding)."""
    check_int("max_new_tokens", max_new_tokens, 1)
    return [c[0] for c in _continuations(model, tok, _texts("prompts", prompts), 1, max_new_tokens, 0.0, None)]


@torch.no_grad()
def sampled_answers(model, tok, prompts: Sequence[str], samples: int, seed: int, temperature: float = 1.0,
                    max_new_tokens: int = 12) -> list[list[str]]:
    """``samples`` continuations of each prompt, sampled at ``temperature`` from one generator seeded with
    ``seed``, each up to EOS. Prompts of the same token length are decoded together (nothing is padded, so each
    row is an ordinary sample)."""
    check_int("samples", samples, 1)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_number("temperature", temperature, 0, strict=True)
    prompts = _texts("prompts", prompts)
    g = torch.Generator(device=_device(model)).manual_seed(seed)
    return _continuations(model, tok, prompts, samples, max_new_tokens, temperature, g)


def _continuations(model, tok, prompts: list[str], copies: int, max_new_tokens: int, temperature: float,
                   generator) -> list[list[str]]:
    """``copies`` continuations of each prompt (temperature 0: greedy), cut at EOS. Prompts of one token length
    form one batch, in increasing length, so a seeded generator gives the same samples on every call."""
    check_healthy(model)
    model.eval()
    dev = _device(model)
    ids = [tok.encode(p) for p in prompts]
    by_len: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_len.setdefault(len(x), []).append(i)
    out: list[list[str]] = [[] for _ in prompts]
    for n, group in sorted(by_len.items()):
        x = torch.tensor([ids[i] for i in group for _ in range(copies)], device=dev)  # (b·copies, n)
        ys = model.generate(x, max_new_tokens, temperature=temperature, eos_id=tok.eos_id, generator=generator)
        for k, y in enumerate(ys[:, n:].tolist()):  # (b·copies, ≤ max_new_tokens)
            out[group[k // copies]].append(tok.decode(y[: y.index(tok.eos_id)] if tok.eos_id in y else y).strip())
    return out
