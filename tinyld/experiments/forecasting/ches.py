"""forecast ``ches``: for the fact world's preference pairs (y⁺ against several kinds of y⁻), CHES (sum and
length-normalised) and token edit distance, against whether DPO on that pair alone lowers log π(y⁺) (Razin et al.).
Each seed is one part."""
from __future__ import annotations

import copy
import statistics

from tinyld.data import Example
from tinyld.evaluate import response_logprobs
from tinyld.experiments.common import WORLD_SFT, BaseModelConfig, sft_stage, stage_config, stage_steps, world_base
from tinyld.experiments.forecasting.config import ForecastConfig
from tinyld.experiments.forecasting.sweep import spread
from tinyld.experiments.kit import add_claim, dash
from tinyld.forecast import auc, ches
from tinyld.preference import PreferenceData, Reference
from tinyld.train import TrainConfig, Trainer

CHES_KINDS = ("rejected", "gpts_rejected", "gptf_chosen", "other_chosen", "hum", "random_tokens")  # the y⁻ used


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance between two token sequences (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def dpo_change(cfg: ForecastConfig, model, tok, pairs: list[Example], seed: int,
               optimizer: str = "adamw") -> list[float]:
    """For each pair alone: the change of log π(y⁺|x) after ``cfg.ches_steps`` DPO steps (sigmoid loss, β
    ``cfg.ches_beta``, lr ``cfg.ches_lr``, no clipping) from ``model``, which is also the reference."""
    before = response_logprobs(model, tok, [e.prompt for e in pairs], [e.chosen for e in pairs]).tolist()
    tc = TrainConfig(task="dpo", steps=cfg.ches_steps, optimizer=optimizer, lr=cfg.ches_lr, grad_clip=0.0, seed=seed,
                     progress=False,
                     log_every=cfg.ches_steps, pair_loss={"name": "sigmoid", "beta": cfg.ches_beta})
    change = []
    for ex, b in zip(pairs, before):
        m = copy.deepcopy(model)
        Trainer(m, PreferenceData(tok, [ex], 1, m.config.block_size, seed, Reference.compute(model, tok, [ex])),
                tc, tok).run()
        change.append(response_logprobs(m, tok, [ex.prompt], [ex.chosen]).item() - b)
    return change


def ches_model(cfg: ForecastConfig, seed: int):
    """(model, tokenizer, world): the fact world's (easy mode) pretrained model of ``cfg.ches_pretrain_steps`` steps
    after the SFT stage that dpo-dynamics starts DPO from, with its default settings (:data:`WORLD_SFT`)."""
    base = BaseModelConfig(pretrain_steps=cfg.ches_pretrain_steps, device=cfg.device)  # preset tiny
    model, tok, world = world_base(base, seed, "easy")
    items = world.train_items()
    epochs = min(WORLD_SFT.epochs, WORLD_SFT.fast_epochs) if cfg.fast else WORLD_SFT.epochs
    steps = stage_steps(epochs, len(items), WORLD_SFT.batch_size)
    tc = stage_config("sft", steps, seed, WORLD_SFT.optimizer, WORLD_SFT.lr)
    return sft_stage(model, tok, [it.example() for it in items], tc, WORLD_SFT.batch_size), tok, world


def ches_seed(cfg: ForecastConfig, seed: int) -> dict:
    """CHES, edit distance and the change of log π(y⁺) under a few DPO steps on each pair alone, for every
    training prompt of the fact world (easy mode, after SFT: :func:`ches_model`) paired with each kind of y⁻ in
    :data:`CHES_KINDS`."""
    model, tok, world = ches_model(cfg, seed)
    items = world.train_items()
    pairs = [(kind, Example(it.prompt, it.chosen, world.probes(it)[kind])) for it in items for kind in CHES_KINDS]
    prompts, chosen, rejected = ([e.prompt for _, e in pairs], [e.chosen for _, e in pairs],
                                 [e.rejected for _, e in pairs])
    score_sum = ches(model, tok, prompts, chosen, rejected).tolist()
    score_norm = ches(model, tok, prompts, chosen, rejected, normalize=True).tolist()
    dist = [edit_distance(tok.encode(c), tok.encode(r)) for c, r in zip(chosen, rejected)]
    change = dpo_change(cfg, model, tok, [e for _, e in pairs], seed)
    falls = [c < 0 for c in change]
    res = {"seed": seed, "pairs": [{"kind": k, "ches": s1, "ches_norm": s2, "edit": d, "change": c}
                                   for (k, _), s1, s2, d, c in zip(pairs, score_sum, score_norm, dist, change)],
           "fall_rate": statistics.fmean(falls),
           "auc": {"ches": auc(score_sum, falls), "ches_norm": auc(score_norm, falls),
                   "edit": auc([-d for d in dist], falls)}}
    q = sorted(range(len(pairs)), key=lambda i: score_sum[i])
    quarter = max(1, len(q) // 4)
    res["fall_rate_top_quarter"] = statistics.fmean(falls[i] for i in q[-quarter:])
    res["fall_rate_bottom_quarter"] = statistics.fmean(falls[i] for i in q[:quarter])
    res["by_kind"] = {k: {"ches": statistics.fmean(p["ches"] for p in res["pairs"] if p["kind"] == k),
                          "change": statistics.fmean(p["change"] for p in res["pairs"] if p["kind"] == k),
                          "fall_rate": statistics.fmean(p["change"] < 0 for p in res["pairs"] if p["kind"] == k)}
                      for k in CHES_KINDS}
    return res


def print_ches_seed(res: dict) -> None:
    print(f"  seed {res['seed']}: log π(y⁺) falls for {res['fall_rate']:.2f} of pairs; AUC ches {res['auc']['ches']}, "
          f"ches_norm {res['auc']['ches_norm']}, −edit distance {res['auc']['edit']}", flush=True)


def judge_ches(seeds: list[dict]) -> dict:
    claims: list[dict] = []
    for form in ("ches", "ches_norm"):
        add_claim(claims, f"{form} ranks falling pairs above edit distance", "CHES identifies the pairs that make "
                  "DPO lower the chosen response's likelihood; edit distance does not",
                  [{"seed": s["seed"], "held": None not in (s["auc"][form], s["auc"]["edit"])
                    and s["auc"][form] > s["auc"]["edit"], "auc": s["auc"][form], "auc_edit": s["auc"]["edit"]}
                   for s in seeds], lambda m: f"{dash(m['auc'], '.2f')} vs {dash(m['auc_edit'], '.2f')}")
    add_claim(claims, "top-CHES quarter falls more than bottom", "high-CHES pairs lower log π(y⁺)",
              [{"seed": s["seed"], "held": s["fall_rate_top_quarter"] > s["fall_rate_bottom_quarter"],
                "top": s["fall_rate_top_quarter"], "bottom": s["fall_rate_bottom_quarter"]} for s in seeds],
              lambda m: f"{m['top']:.2f} vs {m['bottom']:.2f}")
    return {"auc": {k: spread([s["auc"][k] for s in seeds]) for k in ("ches", "ches_norm", "edit")},
            "fall_rate": spread([s["fall_rate"] for s in seeds]), "claims": claims}


# --------------------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------------------

