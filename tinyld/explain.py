"""Where did the probability go? The per-pair numbers behind ``explain`` for your own preference pairs.

The question users ask of a DPO run is "why did log π(y⁺) fall?". Before any training, for every pair on its own,
:func:`pair_forecasts` gives what the paper's mechanism predicts:

- log π(y⁺|x) and log π(y⁻|x), summed over the response and per token;
- CHES (Razin et al., :func:`tinyld.forecast.ches`), summed and length-normalised: high when the two responses
  look alike to the model, which forecasts that DPO lowers log π(y⁺);
- the one-step forecast of a DPO step on that pair alone, with the model as its own reference: the predicted
  Δ log π(y⁺) and Δ log π(y⁻) per unit learning rate (plain SGD), each split by :func:`tinyld.dynamics.halves`
  into the **pull** of y⁺'s half, the **push** of y⁻'s half (the negative gradient) and their net on the prefix
  the two responses share. "y⁺ will fall" is then a sentence with numbers: the push through the shared structure
  outweighs the pull.

:func:`watch_dpo` then runs a short DPO on all the pairs and follows each: log π(y⁺), log π(y⁻) and log π(y*)
(the teacher-forced argmax along y⁺) after every step, where the probability sits at every response position
(:func:`tinyld.squeeze.token_mass`: own token, the other response's token, the argmax, the rest), and at the end
the change of every response token's log-probability and, at each position, the tokens that gained most.
:func:`forecast_auc` scores how well a forecast ranked the pairs whose y⁺ then fell (:func:`tinyld.forecast.auc`).
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F

from tinyld.data import IGNORE, Example, make_batch
from tinyld.dynamics import halves
from tinyld.evaluate import response_logprobs
from tinyld.forecast import auc, ches
from tinyld.preference import PreferenceData, Reference
from tinyld.probes import position_stats
from tinyld.runtime import TinyldError, check_int
from tinyld.squeeze import MASS_CLASSES, token_mass
from tinyld.train import TrainConfig, Trainer
from tinyld.updates import DPOUpdate, lm_rows

FORECASTS = ("ches", "ches_norm", "step")  # scores of "y⁺ will fall", highest first: CHES, its normalised form,
# and minus the one-step forecast of Δ log π(y⁺)


def pair_forecasts(model, tok, examples: Sequence[Example], beta: float = 0.1, loss: str = "sigmoid") -> list[dict]:
    """Before training, for every pair on its own: ``logp_chosen``, ``logp_rejected`` (summed), their per-token
    forms, ``tokens_chosen``, ``tokens_rejected``, ``ches``, ``ches_norm`` and the one-step forecast of a DPO step
    (``loss``, ``beta``) on that pair alone, per unit learning rate: ``step_chosen`` = Δ log π(y⁺) split into
    ``pull`` (y⁺'s half), ``push`` (y⁻'s half) and ``shared`` (their net on the common prefix), and
    ``step_rejected`` likewise for y⁻."""
    examples = list(examples)
    if not examples or not all(isinstance(e, Example) and e.rejected for e in examples):
        raise TinyldError("pair_forecasts needs a non-empty list of Examples with a rejected response (pairs)")
    block = model.config.block_size
    prompts = [e.prompt for e in examples]
    chosen, rejected = [e.chosen for e in examples], [e.rejected for e in examples]
    model.eval()
    with torch.no_grad():
        lp_c = response_logprobs(model, tok, prompts, chosen)  # (N,)
        lp_r = response_logprobs(model, tok, prompts, rejected)  # (N,)
        ch, ch_norm = (ches(model, tok, prompts, chosen, rejected, normalize=n) for n in (False, True))
    dev = next(model.parameters()).device
    out = []
    for i, e in enumerate(examples):
        rc = lm_rows(make_batch(tok, [e.prompt], [e.chosen], block).to(dev))
        rr = lm_rows(make_batch(tok, [e.prompt], [e.rejected], block).to(dev))
        update = DPOUpdate(rc, rr, lp_c[i:i + 1], lp_r[i:i + 1], beta=beta, loss=loss)  # reference: the model itself
        observed = lm_rows(make_batch(tok, [e.prompt] * 2, [e.chosen, e.rejected], block).to(dev))
        parts = {k: v.tolist() for k, v in halves(model, update, observed, 1.0).items()}  # per unit η: (2,) each
        nc, nr = rc.n, rr.n
        out.append({"logp_chosen": lp_c[i].item(), "logp_rejected": lp_r[i].item(), "tokens_chosen": nc,
                    "tokens_rejected": nr, "logp_chosen_per_token": lp_c[i].item() / nc,
                    "logp_rejected_per_token": lp_r[i].item() / nr, "ches": ch[i].item(),
                    "ches_norm": ch_norm[i].item(),
                    **{f"step_{name}": {"pull": parts["chosen"][k], "push": parts["rejected"][k],
                                        "shared": parts["shared"][k],
                                        "total": parts["chosen"][k] + parts["rejected"][k] + parts["shared"][k]}
                       for k, name in enumerate(("chosen", "rejected"))}})
    return out


def forecast_auc(forecasts: list[dict], fell: Sequence[bool]) -> dict:
    """How well each forecast of :data:`FORECASTS` ranked the pairs whose y⁺ fell (``fell``) above the others: its
    AUC (None when every pair fell or none did), with the counts."""
    if len(forecasts) != len(fell):
        raise TinyldError(f"forecast_auc: {len(forecasts)} forecasts but {len(fell)} outcomes")
    fell = [bool(f) for f in fell]
    scores = {"ches": [f["ches"] for f in forecasts], "ches_norm": [f["ches_norm"] for f in forecasts],
              "step": [-f["step_chosen"]["total"] for f in forecasts]}
    return {"fell": sum(fell), "of": len(fell), **{k: auc(v, fell) for k, v in scores.items()}}


class _PairBatch:
    """All pairs in one teacher-forced batch, in their order: rows 0…N−1 the chosen sequences, N…2N−1 the rejected;
    ``other`` holds, at each position, the paired response's token (the prompts are the same, so positions align)."""

    def __init__(self, tok, examples: list[Example], block: int, device):
        n = len(examples)
        b = make_batch(tok, [e.prompt for e in examples] * 2, [e.chosen for e in examples] +
                       [e.rejected for e in examples], block).to(device)
        self.idx, self.targets, self.n = b.idx, b.targets, n  # (2N, T)
        self.other = torch.cat([b.targets[n:], b.targets[:n]])  # (2N, T)
        self.mask = b.targets != IGNORE

    @torch.no_grad()
    def measure(self, model, full: bool = False) -> tuple[dict, torch.Tensor | None]:
        """Per pair: log π(y⁺), log π(y⁻), log π(y*) and the mean mass split over y⁺'s and y⁻'s positions; and, if
        ``full``, the log-probabilities at the response positions (rows of the mask, in order: (N_resp, V))."""
        logits = model.eval()(self.idx)  # (2N, T, V)
        st = position_stats(logits, self.targets)
        mass = token_mass(logits, self.targets, self.other)  # (2N, T, 4)
        mean = (mass.sum(1) / self.mask.sum(1, keepdim=True)).tolist()  # (2N, 4)
        n = self.n
        res = {"chosen": st["logp"][:n].tolist(), "rejected": st["logp"][n:].tolist(),
               "star": st["logp_star"][:n].tolist(),
               "mass": [{"chosen": dict(zip(MASS_CLASSES, mean[i])), "rejected": dict(zip(MASS_CLASSES, mean[n + i]))}
                        for i in range(n)]}
        return res, F.log_softmax(logits[self.mask].double(), -1) if full else None


def watch_dpo(model, tok, examples: Sequence[Example], steps: int, lr: float, optimizer: str = "adamw",
              loss: str = "sigmoid", beta: float = 0.1, batch_size: int = 8, seed: int = 0, top: int = 3) -> dict:
    """A short DPO run (``steps`` steps of ``loss`` with ``beta``, ``optimizer`` at constant ``lr``, no clipping, in
    batches of ``batch_size`` pairs, data order seeded by ``seed``) on a copy of ``model``, which is also the
    reference, measured after every step. Returns the measured ``steps``, per pair the curves of ``chosen``,
    ``rejected`` and ``star`` and the mass split (``mass``: per measurement, the mean over y⁺'s and y⁻'s positions),
    the mean curves, which pairs' y⁺ ``fell``, and ``tokens``: per pair and response, at every position the token,
    its change of log-probability over the run and the ``top`` tokens that gained most probability there."""
    examples = list(examples)
    check_int("watch_dpo steps", steps, 1)
    check_int("watch_dpo top", top, 1)
    dev = next(model.parameters()).device
    ref = Reference.compute(model, tok, examples)
    data = PreferenceData(tok, examples, min(batch_size, len(examples)), model.config.block_size, seed, reference=ref)
    pb = _PairBatch(tok, examples, model.config.block_size, dev)
    m = copy.deepcopy(model)
    first, lp0 = pb.measure(m, full=True)
    measured, at, last = [first], [0], {}

    def callback(trainer, step):  # after every step; the last one also keeps the log-probs for the token changes
        res, last["lp"] = pb.measure(trainer.model, full=step == steps)
        measured.append(res)
        at.append(step)
    tc = TrainConfig(task="dpo", steps=steps, optimizer=optimizer, lr=lr, grad_clip=0.0, seed=seed, log_every=steps,
                     progress=False, pair_loss={"name": loss, "beta": beta})
    Trainer(m, data, tc, tok).run(callback)
    lp1 = last["lp"]  # (N_resp, V) after the last step
    n = len(examples)
    curves = {k: [[r[k][i] for r in measured] for i in range(n)] for k in ("chosen", "rejected", "star")}
    pairs = [{**{k: curves[k][i] for k in curves}, "mass": [r["mass"][i] for r in measured]} for i in range(n)]
    mean = {k: [sum(c[j] for c in curves[k]) / n for j in range(len(at))] for k in curves}
    return {"steps": at, "pairs": pairs, "mean": mean, "fell": [p["chosen"][-1] < p["chosen"][0] for p in pairs],
            "tokens": _token_changes(tok, pb, lp0, lp1, top)}


def _token_changes(tok, pb: _PairBatch, lp0: torch.Tensor, lp1: torch.Tensor, top: int) -> list[dict]:
    """Per pair and response: every position's token (decoded), Δ log π of it, and the ``top`` tokens whose
    probability rose most there (decoded, with the gain)."""
    rows = pb.mask.nonzero()  # (N_resp, 2): (sequence, position), in order
    gain = lp1.exp() - lp0.exp()  # (N_resp, V)
    best = gain.topk(top, -1)
    labels = pb.targets[pb.mask]
    dlp = (lp1 - lp0).gather(-1, labels[:, None])[:, 0]
    out = [{"chosen": [], "rejected": []} for _ in range(pb.n)]
    for r, (seq, _) in enumerate(rows.tolist()):
        side, pair = ("chosen", seq) if seq < pb.n else ("rejected", seq - pb.n)
        out[pair][side].append({"token": tok.decode([int(labels[r])]), "dlogp": dlp[r].item(),
                                "gained": [(tok.decode([int(v)]), g) for v, g in zip(best.indices[r].tolist(),
                                                                                     best.values[r].tolist())]})
    return out
