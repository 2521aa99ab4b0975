"""Attribution: which training example raised y_{j≠u}⁺ under x_u (paper §4's hallucination mechanism), in a
plain-SGD run where the engine's per-example prediction −η·A·K·G_j is exact to first order."""
from __future__ import annotations

import copy
import time

import torch

from tinyld.data import PairData, make_batch
from tinyld.distributed import is_main
from tinyld.dynamics import contributions
from tinyld.evaluate import response_logprobs
from tinyld.experiments.sft_dynamics.config import SFTDynamicsConfig
from tinyld.probes import ProbeSet
from tinyld.runtime import TinyldError
from tinyld.train import TrainConfig, Trainer
from tinyld.updates import SFTUpdate, lm_rows


def attribution(cfg: SFTDynamicsConfig, seed: int, model, tok, probes: ProbeSet) -> dict:
    """Plain SGD at ``cfg.attr_lr`` (no clipping, no momentum). Before every step, the engine's per-example
    prediction (:func:`~tinyld.dynamics.contributions`) for the observed sequences; after it, the actual log π.
    Observed: for the first ``attr_prompts`` training prompts u, y_{j≠u}⁺ and y_u⁺ under x_u (columns 2k, 2k+1).
    ``r2``, ``final_rel_err`` and the two curves are about the y_{j≠u}⁺ columns: summed predictions vs actual.
    Under torchrun the ranks other than 0 only train (and return ``{}``)."""
    model = copy.deepcopy(model).use_fast(False)  # float32 steps: the first-order comparison is exact to rounding
    train = probes.split("train")
    examples = probes.examples("train")
    data = PairData(tok, examples, cfg.batch_size, model.config.block_size, seed)
    steps = cfg.epochs * data.batches_per_epoch
    us = train[: min(cfg.attr_prompts, len(train))]
    fam = "other_chosen" if "other_chosen" in probes.families else "chosen"
    obs_p = [p.prompt for p in us for _ in (fam, "chosen")]
    obs_y = [p.responses[f] for p in us for f in (fam, "chosen")]
    dev = next(model.parameters()).device
    obs = make_batch(tok, obs_p, obs_y, model.config.block_size).to(dev)
    rows = lm_rows(obs)
    n_ex, n_obs = len(examples), len(obs_y)
    pred = torch.zeros(n_ex, n_obs, dtype=torch.float64)  # Σ_t predicted Δ log π(obs) due to example j
    main = is_main()
    actual = [response_logprobs(model, tok, obs_p, obs_y).double()] if main else []
    pred_total = torch.zeros(n_obs, dtype=torch.float64)
    pred_curves = [pred_total.clone()]

    def before(step):  # the prediction at θ_step for the batch about to be applied
        b = data.batch(step).to(dev)
        c = contributions(model, SFTUpdate(lm_rows(b)), rows, cfg.attr_lr).double().cpu()  # (B, n_obs)
        for r, j in enumerate(data.indices(step)):
            pred[j] += c[r]
        pred_total.add_(c.sum(0))

    def callback(trainer, step):
        actual.append(response_logprobs(trainer.model, tok, obs_p, obs_y).double())
        pred_curves.append(pred_total.clone())
        if step < steps:
            before(step)

    tc = TrainConfig(task="sft", steps=steps, optimizer="sgd", lr=cfg.attr_lr, grad_clip=0.0, seed=seed,
                     log_every=steps, progress=False)
    t0 = time.perf_counter()
    try:
        if main:
            before(0)
        Trainer(model, data, tc, tok).run(callback if main else None)
    except TinyldError as e:  # TrainingDiverged too
        raise TinyldError(f"the attribution run (SGD, seed {seed}) failed at --attr-lr {cfg.attr_lr:g}: lower it, so "
                          f"that one step moves log-probs by a fraction of a nat ({getattr(e, 'fact', e)})") from None
    if not main:
        return {}
    act = torch.stack(actual) - actual[0]  # (steps+1, n_obs) accumulated actual change
    prd = torch.stack(pred_curves)  # (steps+1, n_obs) accumulated predicted change
    per_probe = attributed_probes(train, us, fam, pred, act)
    r2, rel = first_order_fit(act[:, 0::2], prd[:, 0::2])
    return {"seed": seed, "optimizer": "sgd", "lr": cfg.attr_lr, "steps": steps, "family": fam,
            "probes": per_probe, "per_example": pred.tolist(), "observed": list(zip(obs_p, obs_y)),
            "seconds": time.perf_counter() - t0,
            "curve_actual": act[:, 0::2].mean(1).tolist(), "curve_predicted": prd[:, 0::2].mean(1).tolist(),
            "r2": r2, "final_rel_err": rel}


def attributed_probes(train: list, us: list, fam: str, pred: torch.Tensor, act: torch.Tensor) -> list[dict]:
    """Per observed prompt u (``us``, the first of the training probes ``train``): the actual and predicted change of
    y_{j≠u}⁺ under x_u, split into the share of the example j whose answer it is, of u itself and of the rest, the top
    contributor, and the same totals for y_u⁺. ``pred``: (examples, observed) summed predictions; ``act``: (steps+1,
    observed) accumulated actual change; observed columns 2k (``fam``) and 2k + 1 (y_u⁺)."""
    prompt_index = {p.prompt: k for k, p in enumerate(train)}
    chosen_index = {p.responses["chosen"]: k for k, p in enumerate(train)}
    per_probe = []
    for k, p in enumerate(us):
        o = 2 * k  # the y_{j≠u}⁺ column; 2k + 1 is y_u⁺
        u = prompt_index[p.prompt]
        j = chosen_index.get(p.responses[fam])
        j = None if j == u else j  # observing y_u⁺ itself: no other example j
        col = pred[:, o]
        per_probe.append({"prompt": p.prompt, "response": p.responses[fam], "u": u, "j": j,
                          "actual": act[-1, o].item(), "predicted": col.sum().item(),
                          "from_j": col[j].item() if j is not None else None, "from_u": col[u].item(),
                          "from_rest": (col.sum() - (col[j] if j is not None else 0) - col[u]).item(),
                          "top_example": int(col.argmax()), "top_is_j": j is not None and int(col.argmax()) == j,
                          "chosen_actual": act[-1, o + 1].item(), "chosen_predicted": pred[:, o + 1].sum().item()})
    return per_probe


def first_order_fit(act: torch.Tensor, prd: torch.Tensor) -> tuple[float | None, float | None]:
    """(R², final relative error) of the summed predictions ``prd`` against the actual changes ``act``, both
    (steps+1, columns) accumulated from step 0: R² over every step after the first, the relative error of the last
    step's vector. None where the actual change is flat (R²) or zero (relative error)."""
    a, pr = act[1:].flatten(), prd[1:].flatten()
    ss = ((a - a.mean()) ** 2).sum()
    r2 = (1 - ((a - pr) ** 2).sum() / ss).item() if ss > 0 else None  # None: the actual curve is flat
    norm = act[-1].norm()
    rel = ((act[-1] - prd[-1]).norm() / norm).item() if norm > 0 else None
    return r2, rel

