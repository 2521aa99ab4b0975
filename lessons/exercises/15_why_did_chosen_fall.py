"""Exercises of lesson 15 — why did my chosen log-prob fall?

Fill in each function below where it says ``raise NotImplementedError``, then run this file:

    python lessons/exercises/15_why_did_chosen_fall.py

Each answer is checked against an independent computation (autograd of the DPO loss, the change a real step along
η·c·(g⁺ − g⁻) makes on a small model, RPO's own residual), and a failed check prints a hint. Worked solutions:
``lessons/solutions/15_why_did_chosen_fall.py``.
"""
import sys
from functools import lru_cache
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from check import compare, exercise, run_checks  # noqa: E402


def dpo_weight(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Exercise 1: c = β·σ(−β·m) per pair, with the margin m = (log π(y⁺) − ref⁺) − (log π(y⁻) − ref⁻); all (B,)."""
    raise NotImplementedError


def forecast_chosen(g_plus: torch.Tensor, g_minus: torch.Tensor, c: float) -> float:
    """Exercise 2: the forecast Δ log π(y⁺) per unit η of one plain-SGD DPO step with weight c on both halves, from
    g± = ∇_θ log π(y±|x), flattened (P,)."""
    raise NotImplementedError


def alpha_to_hold(dpo_change: float, sft_change: float, n_chosen: int) -> float:
    """Exercise 3: the RPO weight α at which a DPO step + α·NLL(y⁺)/n⁺ is forecast to leave log π(y⁺) where it is,
    given the forecast fall of log π(y⁺) under the DPO step (``dpo_change`` < 0) and the forecast rise under one
    SFT step on y⁺ (``sft_change``), both per unit η, and n⁺ the number of y⁺'s scored tokens (EOS included)."""
    raise NotImplementedError


@lru_cache(maxsize=1)
def small():
    """A small random GPT in float64 with the world's tokenizer, and one pair as rows."""
    from tinyld import GPT, GPTConfig
    from tinyld.data import make_batch
    from tinyld.updates import lm_rows
    from tinyld.world import World
    world = World(0)
    tok = world.tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).double().eval()
    it = world.train_items()[0]
    rows = [lm_rows(make_batch(tok, [it.prompt], [y], model.config.block_size)) for y in (it.chosen, it.rejected)]
    return model, tok, it, rows


def logp_of(model, rows) -> torch.Tensor:
    z = rows.logits(model)
    return torch.log_softmax(z, -1).gather(-1, rows.labels[:, None].clamp(min=0))[:, 0].sum()


@exercise(1, "the weight of DPO's halves", "the margin is the difference of the two log-ratios; the weight is "
          "β times the sigmoid of MINUS β times it (β/2 at a zero margin)")
def check_weight(answers):
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3  # four log-probs for 6 pairs
    lc = lp[0].clone().requires_grad_(True)
    beta = 0.3
    loss = -torch.nn.functional.logsigmoid(beta * ((lc - lp[2]) - (lp[1] - lp[3]))).sum()
    want, = torch.autograd.grad(loss, lc)  # ∂L/∂log π(y⁺) = −c
    return compare(answers.dpo_weight(lp[0], lp[1], lp[2], lp[3], beta), -want, 1e-7,
                   "a closed form: float64, or β rounded to float32")


@exercise(2, "the forecast from two gradients", "a DPO step moves θ by η·c·(g⁺ − g⁻); to first order log π(y⁺) "
          "moves by the inner product of g⁺ with that step")
def check_forecast(answers):
    model, tok, it, (rc, rr) = small()
    params = [p for p in model.parameters()]
    grads = [torch.cat([x.flatten() for x in torch.autograd.grad(logp_of(model, r), params)]) for r in (rc, rr)]
    c, eta = 0.05, 1e-6
    got = answers.forecast_chosen(grads[0], grads[1], c)
    step = eta * c * (grads[0] - grads[1])
    with torch.no_grad():
        before = logp_of(model, rc).item()
        k = 0
        for p in params:  # the real step, then back
            p += step[k:k + p.numel()].view_as(p)
            k += p.numel()
        after = logp_of(model, rc).item()
        k = 0
        for p in params:
            p -= step[k:k + p.numel()].view_as(p)
            k += p.numel()
    return compare(got, (after - before) / eta, 1e-3 * abs((after - before) / eta) + 1e-6,
                   "a real float64 step of η = 1e-6: first order to about 1e-6 relative")


@exercise(3, "the α that holds y⁺", "RPO adds α/n⁺ times an SFT step on y⁺, so the forecast is dpo_change + "
          "α·sft_change/n⁺; set it to 0 and solve for α")
def check_alpha(answers):
    from tinyld.data import make_batch
    from tinyld.dynamics import halves, sequence_change
    from tinyld.kernel import predict
    from tinyld.updates import DPOUpdate, SFTUpdate, lm_rows
    model, tok, it, (rc, rr) = small()
    obs = lm_rows(make_batch(tok, [it.prompt] * 2, [it.chosen, it.rejected], model.config.block_size))
    with torch.no_grad():
        ref = [logp_of(model, r).reshape(1) for r in (rc, rr)]
    dpo = sum(halves(model, DPOUpdate(rc, rr, *ref, beta=0.1), obs, 1.0).values())[0].item()
    sft = sequence_change(obs, predict(model, obs, SFTUpdate(rc), 1.0))[0].item()
    for d in (-abs(dpo) - 1.0, -0.01 * sft):  # two forecast falls of y⁺
        alpha = answers.alpha_to_hold(d, sft, rc.n)
        if isinstance(alpha, torch.Tensor) and alpha.numel() == 1:
            alpha = alpha.item()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
            return f"α must be a number ≥ 0, got {alpha!r}"
        rpo = sum(halves(model, DPOUpdate(rc, rr, *ref, beta=0.1, loss="rpo", alpha=float(alpha)), obs, 1.0)
                  .values())[0].item()  # RPO's own one-step forecast, from its residual
        problem = compare(rpo - dpo + d, 0.0, 1e-6 * abs(d) + 1e-9, "float64 forecasts")
        if problem:
            return f"with your α = {alpha:.6g} the forecast is not 0: {problem}"


CHECKS = [check_weight, check_forecast, check_alpha]

if __name__ == "__main__":
    sys.exit(0 if all(run_checks(CHECKS, sys.modules[__name__])) else 1)
