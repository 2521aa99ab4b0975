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
from tinyld.dynamics import halves, sequence_change
from tinyld.evaluate import response_logprobs
from tinyld.forecast import auc, ches
from tinyld.kernel import predict
from tinyld.preference import PreferenceData, Reference
from tinyld.probes import position_stats
from tinyld.runtime import TinyldError, check_int, check_number
from tinyld.squeeze import MASS_CLASSES, token_mass
from tinyld.train import TrainConfig, Trainer
from tinyld.updates import DPOUpdate, SFTUpdate, lm_rows

FORECASTS = ("ches", "ches_norm", "step")  # scores of "y⁺ will fall", highest first: CHES, its normalised form,
# and minus the one-step forecast of Δ log π(y⁺)


def pair_forecasts(model, tok, examples: Sequence[Example], beta: float = 0.1, loss: str = "sigmoid") -> list[dict]:
    """Before training, for every pair on its own: ``logp_chosen``, ``logp_rejected`` (summed), their per-token
    forms, ``tokens_chosen``, ``tokens_rejected``, ``ches``, ``ches_norm`` and the one-step forecast of a DPO step
    (``loss``, ``beta``) on that pair alone, per unit learning rate: ``step_chosen`` = Δ log π(y⁺) split into
    ``pull`` (y⁺'s half), ``push`` (y⁻'s half) and ``shared`` (their net on the common prefix), and
    ``step_rejected`` likewise for y⁻; ``sft_chosen`` and ``sft_rejected``: the predicted (Δ log π(y⁺), Δ log π(y⁻))
    of one SFT step on y⁺, or on y⁻, alone, per unit learning rate (what :func:`fixes` builds on)."""
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
    try:
        for i, e in enumerate(examples):
            out.append(pair_forecast(model, tok, e, block, dev, beta, loss, (lp_c[i], lp_r[i], ch[i], ch_norm[i])))
    except KeyboardInterrupt as err:  # Ctrl-C: keep the pairs already forecast
        raise ExplainStopped(f"Ctrl-C while forecasting: {len(out)} of {len(examples)} pairs forecast, the DPO run "
                             "not started", out) from err
    return out


def pair_forecast(model, tok, e: Example, block: int, dev, beta: float, loss: str, measured) -> dict:
    """pair_forecasts for one pair; ``measured``: its (log π(y⁺), log π(y⁻), CHES, normalised CHES), (1,) each."""
    lp_c, lp_r, ch, ch_norm = measured
    rc = lm_rows(make_batch(tok, [e.prompt], [e.chosen], block).to(dev))
    rr = lm_rows(make_batch(tok, [e.prompt], [e.rejected], block).to(dev))
    update = DPOUpdate(rc, rr, lp_c.reshape(1), lp_r.reshape(1), beta=beta, loss=loss)  # reference: the model itself
    observed = lm_rows(make_batch(tok, [e.prompt] * 2, [e.chosen, e.rejected], block).to(dev))
    parts = {k: v.tolist() for k, v in halves(model, update, observed, 1.0).items()}  # per unit η: (2,) each
    sft = {name: sequence_change(observed, predict(model, observed, SFTUpdate(rows), 1.0)).tolist()
           for name, rows in (("sft_chosen", rc), ("sft_rejected", rr))}  # per unit η: (Δ y⁺, Δ y⁻) each
    nc, nr = rc.n, rr.n
    return {"logp_chosen": lp_c.item(), "logp_rejected": lp_r.item(), "tokens_chosen": nc, "tokens_rejected": nr,
            "logp_chosen_per_token": lp_c.item() / nc, "logp_rejected_per_token": lp_r.item() / nr,
            "ches": ch.item(), "ches_norm": ch_norm.item(), **sft,
            **{f"step_{name}": {"pull": parts["chosen"][k], "push": parts["rejected"][k], "shared": parts["shared"][k],
                                "total": parts["chosen"][k] + parts["rejected"][k] + parts["shared"][k]}
               for k, name in enumerate(("chosen", "rejected"))}}


def forecast_auc(forecasts: list[dict], fell: Sequence[bool]) -> dict:
    """How well each forecast of :data:`FORECASTS` ranked the pairs whose y⁺ fell (``fell``) above the others: its
    AUC (None when every pair fell or none did), with the counts."""
    if len(forecasts) != len(fell):
        raise TinyldError(f"forecast_auc: {len(forecasts)} forecasts but {len(fell)} outcomes")
    fell = [bool(f) for f in fell]
    scores = {"ches": [f["ches"] for f in forecasts], "ches_norm": [f["ches_norm"] for f in forecasts],
              "step": [-f["step_chosen"]["total"] for f in forecasts]}
    return {"fell": sum(fell), "of": len(fell), **{k: auc(v, fell) for k, v in scores.items()}}


def fixes(forecasts: list[dict], alpha: float = 1.0) -> list[dict]:
    """What the one-step forecast predicts for each fix the mechanism suggests, per unit learning rate (plain SGD),
    as the mean over the pairs of the predicted Δ log π(y⁺) and Δ log π(y⁻) (``chosen``, ``rejected``) and the
    number of pairs whose y⁺ is forecast to fall (``fall``):

    - ``dpo``: the DPO step as run (the baseline);
    - ``smaller step``: lr ÷ 10; at first order every change scales with the step, so the same pairs fall, slower;
    - ``nll``: an NLL term on y⁺ as in RPO, ``α``·NLL(y⁺)/n⁺ (in TRL 1.x: ``loss_type=["sigmoid", "sft"]``,
      ``loss_weights=[1, α]``): the SFT pull on y⁺ added to the DPO step; ``alpha_needed``: per pair, the α at
      which its forecast Δ log π(y⁺) is 0 (None where y⁺ is not forecast to fall);
    - ``sft on y⁺``: one more SFT step on y⁺ before DPO; ``offsets``: per pair forecast to fall, how many DPO steps
      of its forecast fall that one SFT step makes up (None elsewhere);
    - ``extend``: one SFT step on y⁺ and on y⁻ before DPO (the paper's extension), which lifts y⁻ out of the
      low-probability region where the negative gradient squeezes hardest.

    The verdict shows these as forecasts, not as advice: what happens over a whole run is for the run to show."""
    if not forecasts:
        raise TinyldError("fixes needs the forecasts of at least one pair")
    alpha = check_number("fixes alpha", alpha, 0)
    n = len(forecasts)
    mean = lambda xs: sum(xs) / n  # noqa: E731
    dpo = [(f["step_chosen"]["total"], f["step_rejected"]["total"]) for f in forecasts]
    nll = [(c + alpha * f["sft_chosen"][0] / f["tokens_chosen"], r + alpha * f["sft_chosen"][1] / f["tokens_chosen"])
           for (c, r), f in zip(dpo, forecasts)]
    sft = [tuple(f["sft_chosen"]) for f in forecasts]
    ext = [(f["sft_chosen"][0] + f["sft_rejected"][0], f["sft_chosen"][1] + f["sft_rejected"][1]) for f in forecasts]

    def row(name: str, what: str, changes, **extra) -> dict:
        return {"fix": name, "what": what, "chosen": mean([c for c, _ in changes]),
                "rejected": mean([r for _, r in changes]), "fall": sum(c < 0 for c, _ in changes), "of": n, **extra}
    return [row("dpo", "the DPO step as run", dpo),
            row("smaller step", "the same step at lr ÷ 10", [(c / 10, r / 10) for c, r in dpo]),
            row("nll", f"DPO + an NLL term on y⁺ (RPO, α = {alpha:g})", nll,
                alpha_needed=[-c * f["tokens_chosen"] / f["sft_chosen"][0] if c < 0 < f["sft_chosen"][0] else None
                              for (c, _), f in zip(dpo, forecasts)]),
            row("sft on y⁺", "one more SFT step on y⁺ before DPO", sft,
                offsets=[s[0] / -c if c < 0 else None for s, (c, _) in zip(sft, dpo)]),
            row("extend", "one SFT step on y⁺ and on y⁻ before DPO (the extension)", ext)]


class ExplainStopped(KeyboardInterrupt):
    """Ctrl-C stopped a measurement of ``explain``; ``partial`` holds what was measured before it, ``stopped``
    says where it stopped."""

    def __init__(self, stopped: str, partial):
        super().__init__(stopped)
        self.stopped, self.partial = stopped, partial


class PairBatch:
    """All pairs in one teacher-forced batch ``b``, in their order: rows 0…N−1 the chosen sequences, N…2N−1 the
    rejected; ``other`` holds, at each position, the paired response's token (the prompts are the same, so
    positions align)."""

    def __init__(self, b, n: int):
        self.idx, self.targets, self.n = b.idx, b.targets, n  # (2N, T)
        self.other = torch.cat([b.targets[n:], b.targets[:n]])  # (2N, T)
        self.mask = b.targets != IGNORE

    @classmethod
    def of(cls, tok, examples: list[Example], block: int, device) -> "PairBatch":
        return cls(make_batch(tok, [e.prompt for e in examples] * 2, [e.chosen for e in examples] +
                              [e.rejected for e in examples], block).to(device), len(examples))

    @torch.no_grad()
    def measure(self, model, full: bool = False) -> tuple[dict, torch.Tensor | None]:
        """Per pair: log π(y⁺), log π(y⁻), log π(y*) and the mean mass split over y⁺'s and y⁻'s positions; and, if
        ``full``, the log-probabilities at the response positions (rows of the mask, in order: (N_resp, V))."""
        out = model.eval()(self.idx)
        logits = getattr(out, "logits", out)  # (2N, T, V); a Hugging Face model returns an output object
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
    pb = PairBatch.of(tok, examples, model.config.block_size, dev)
    m = copy.deepcopy(model)
    first, lp0 = pb.measure(m, full=True)
    measured, at, last = [first], [0], {}

    def callback(trainer, step):  # after every step; the last one also keeps the log-probs for the token changes
        res, last["lp"] = pb.measure(trainer.model, full=step == steps)
        measured.append(res)
        at.append(step)
    tc = TrainConfig(task="dpo", steps=steps, optimizer=optimizer, lr=lr, grad_clip=0.0, seed=seed, log_every=steps,
                     progress=False, pair_loss={"name": loss, "beta": beta})
    try:
        Trainer(m, data, tc, tok).run(callback)
    except KeyboardInterrupt as err:  # Ctrl-C: keep every measurement made so far, and the token changes until now
        if "lp" not in last or last["lp"] is None:
            last["lp"] = pb.measure(m, full=True)[1]
        stopped = f"Ctrl-C after DPO step {at[-1]} of {steps}"
        raise ExplainStopped(stopped, watched_result(measured, at, pb, tok, lp0, last["lp"], top, stopped)) from err
    return watched_result(measured, at, pb, tok, lp0, last["lp"], top)


def watched_result(measured: list[dict], at: list[int], pb: "PairBatch", tok, lp0, lp1, top: int,
                   stopped: str | None = None) -> dict:
    """The result of a watched run from its measurements (``measured``, one per step of ``at``), the batch ``pb``
    they came from and the log-probabilities before and after (``lp0``, ``lp1``); ``stopped``: why it ended early."""
    n = pb.n
    curves = {k: [[r[k][i] for r in measured] for i in range(n)] for k in ("chosen", "rejected", "star")}
    pairs = [{**{k: curves[k][i] for k in curves}, "mass": [r["mass"][i] for r in measured]} for i in range(n)]
    mean = {k: [sum(c[j] for c in curves[k]) / n for j in range(len(at))] for k in curves}
    return {"steps": list(at), "pairs": pairs, "mean": mean, "fell": [p["chosen"][-1] < p["chosen"][0] for p in pairs],
            "tokens": _token_changes(tok, pb, lp0, lp1, top), "stopped": stopped}


def _token_changes(tok, pb: PairBatch, lp0: torch.Tensor, lp1: torch.Tensor, top: int) -> list[dict]:
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
