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

:func:`forecast_auc` scores how well a forecast ranked the pairs whose y⁺ then fell (:func:`tinyld.forecast.auc`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from tinyld.data import Example, make_batch
from tinyld.dynamics import halves
from tinyld.evaluate import response_logprobs
from tinyld.forecast import auc, ches
from tinyld.runtime import TinyldError
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
                    "logp_rejected_per_token": lp_r[i].item() / nr, "ches": ch[i].item(), "ches_norm": ch_norm[i].item(),
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
