"""forecast ``curate``: new training questions added in rounds, i.i.d. from the pool or chosen like the training
examples of low pre-memorization accuracy (nearest in the model's hidden-state embedding). Each seed is one part."""
from __future__ import annotations

import random

import torch

from tinyld.experiments.forecasting.config import ForecastConfig
from tinyld.experiments.forecasting.sweep import accuracy, arithmetic_base, finetune, pm_table, spread
from tinyld.experiments.kit import add_claim
from tinyld.reasoning import Problem
from tinyld.runtime import TinyldError


@torch.no_grad()
def embed(model, tok, problems: list[Problem]) -> torch.Tensor:
    """Each question's embedding: the mean of the model's last hidden states over its prompt, unit length (N, C)."""
    ids = [tok.encode(p.prompt()) for p in problems]
    width = max(map(len, ids))
    idx = torch.tensor([x + [tok.pad_id] * (width - len(x)) for x in ids], device=next(model.parameters()).device)
    h = model.eval().hidden(idx)  # (N, T, C): causal, so the padding after a prompt does not change its states
    keep = torch.tensor([[1.0] * len(x) + [0.0] * (width - len(x)) for x in ids], device=h.device)[..., None]
    e = (h * keep).sum(1) / keep.sum(1)
    return torch.nn.functional.normalize(e.double(), dim=-1).cpu()


def like_low_pm(model, tok, data: list[Problem], pm: list[float], candidates: list[Problem], k: int) -> list[int]:
    """Indices of the ``k`` candidates nearest (cosine, in :func:`embed`) to any training question of low
    pre-memorization accuracy (< 0.5; the lowest quarter if none is that low)."""
    order = sorted(range(len(data)), key=lambda i: pm[i])
    low = [i for i in order if pm[i] < 0.5] or order[: max(1, len(order) // 4)]
    sim = embed(model, tok, candidates) @ embed(model, tok, [data[i] for i in low]).T  # (M, L)
    return sim.max(1).values.argsort(descending=True)[:k].tolist()


def curate_seed(cfg: ForecastConfig, seed: int) -> dict:
    world, tok, base = arithmetic_base(cfg, seed)
    pool, test = world.pool(), world.test_problems()
    need = cfg.curate_start + cfg.curate_rounds * cfg.curate_add
    if need > len(pool):
        raise TinyldError(f"forecast curation needs {need} questions; the pool has {len(pool)}")
    start = pool[: cfg.curate_start]
    arms = {"iid": {"data": list(start), "rest": pool[cfg.curate_start:], "test_acc": [], "size": []},
            "curated": {"data": list(start), "rest": pool[cfg.curate_start:], "test_acc": [], "size": []}}
    rng = random.Random(f"curate/{seed}")
    for rnd in range(cfg.curate_rounds + 1):
        for name, arm in arms.items():
            if rnd == 0 and name == "curated":  # both arms start from the same questions: one run serves both
                arm.update(test_acc=list(arms["iid"]["test_acc"]), size=list(arms["iid"]["size"]),
                           model=arms["iid"]["model"], pm=arms["iid"]["pm"])
                continue
            measure = arm["data"] if name == "curated" or rnd == 0 else None  # PM only where it is used
            model, points = finetune(cfg, seed, base, tok, world, arm["data"], cfg.curate_lr, cfg.curate_epochs,
                                     measure)
            arm["test_acc"].append(accuracy(cfg, model, tok, world, test, seed + 1).mean().item())
            arm["size"].append(len(arm["data"]))
            arm["model"], arm["pm"] = model, (pm_table(points, cfg.tau)[-1].tolist() if points else None)
        print(f"  seed {seed} · round {rnd}: test acc i.i.d. {arms['iid']['test_acc'][-1]:.2f}, curated "
              f"{arms['curated']['test_acc'][-1]:.2f} ({len(arms['iid']['data'])} questions)", flush=True)
        if rnd == cfg.curate_rounds:
            break
        for name, arm in arms.items():
            if name == "iid":
                pick = rng.sample(range(len(arm["rest"])), cfg.curate_add)
            else:
                pick = like_low_pm(arm["model"], tok, arm["data"], arm["pm"], arm["rest"], cfg.curate_add)
            chosen = set(pick)
            arm["data"] = arm["data"] + [arm["rest"][i] for i in pick]
            arm["rest"] = [p for i, p in enumerate(arm["rest"]) if i not in chosen]
    out = {"seed": seed}
    for name, arm in arms.items():
        added = arm["size"][-1] - arm["size"][0]
        out[name] = {"size": arm["size"], "test_acc": arm["test_acc"],
                     "distinct_triples": len({(p.a, p.b, p.c) for p in arm["data"]}),
                     "gain_per_question": (arm["test_acc"][-1] - arm["test_acc"][0]) / added}
    gi, gc = out["iid"]["gain_per_question"], out["curated"]["gain_per_question"]
    out["efficiency_ratio"] = gc / gi if gi > 0 else None
    return out


def judge_curate(seeds: list[dict]) -> dict:
    claims: list[dict] = []
    add_claim(claims, "curated data ≥ 1.5× as data-efficient", "1.5–2× the data efficiency of i.i.d. data",
              [{"seed": s["seed"], "held": s["efficiency_ratio"] is not None and s["efficiency_ratio"] >= 1.5,
                "ratio": s["efficiency_ratio"], "gain_iid": s["iid"]["gain_per_question"],
                "gain_curated": s["curated"]["gain_per_question"]} for s in seeds],
              lambda m: "—" if m["ratio"] is None else f"{m['ratio']:.2f}×")
    return {"efficiency_ratio": spread([s["efficiency_ratio"] for s in seeds]),
            "gain_iid": spread([s["iid"]["gain_per_question"] for s in seeds]),
            "gain_curated": spread([s["curated"]["gain_per_question"] for s in seeds]), "claims": claims}


# --------------------------------------------------------------------------------------------------------------
# CHES: which preference pairs make DPO lower log π(y⁺)
