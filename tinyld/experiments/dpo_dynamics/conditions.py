"""dpo-dynamics ``--experiment conditions``: the dynamics claims under the default, a shallow valley (400 pretraining
steps), plain SGD, β × 10, lr / 3 and lr × 3. Each (condition, seed) is one part of the run."""
from __future__ import annotations

import statistics
from pathlib import Path

from tinyld.distributed import is_main
from tinyld.evaluate import valley_depth
from tinyld.experiments.dpo_dynamics.claims import judge_dpo, squeeze_summary
from tinyld.experiments.dpo_dynamics.config import DPODynamicsConfig
from tinyld.experiments.dpo_dynamics.stages import base, dpo, probes_for, sft, sft_steps
from tinyld.experiments.kit import Folder, as_folder, conditions_table, held_counts


def condition_list(cfg: DPODynamicsConfig) -> list[tuple[str, dict]]:
    """(name, what it changes) per condition. SGD's learning rate is 10 × the default (DPO's β(1 − a) ≤ β scales
    its gradient)."""
    shallow = 400 if cfg.pretrain_steps > 400 else max(1, cfg.pretrain_steps // 10)
    return [("default", {}), ("shallow valley", {"pre": shallow}), ("sgd", {"optimizer": "sgd", "lr": 10 * cfg.lr}),
            (f"β {10 * cfg.beta:g}", {"beta": 10 * cfg.beta}), (f"lr {cfg.lr / 3:.2g}", {"lr": cfg.lr / 3}),
            (f"lr {cfg.lr * 3:.2g}", {"lr": cfg.lr * 3})]


def condition_seed(cfg: DPODynamicsConfig, kw: dict, seed: int, mode: str) -> dict:
    """One seed under one condition: the SFT stage and the DPO run with the condition's settings, and the valley
    depth after SFT. Under torchrun the ranks other than 0 only train and return ``{}``."""
    model, tok, world = base(cfg, seed, mode, kw.get("pre"))
    items = world.train_items()
    model = sft(cfg, seed, model, tok, [it.example() for it in items], sft_steps(cfg, len(items)),
                optimizer=kw.get("optimizer"), lr=kw.get("lr"))
    valley = valley_depth(model, tok) if is_main() else None
    run = dpo(cfg, seed, model, tok, probes_for(model, tok, world), world, optimizer=kw.get("optimizer"),
              lr=kw.get("lr"), beta=kw.get("beta"), dense=True)
    run.pop("models", None)
    return {"valley_depth": valley, "run": run} if is_main() else {}


def run_conditions(cfg: DPODynamicsConfig, mode: str, folder: Folder | Path) -> dict:
    """The claims under each of :func:`condition_list`: a table (claims × conditions, seeds held) and
    conditions_{mode}.txt. Under torchrun the ranks other than 0 only train (and return ``{}``)."""
    folder = as_folder(folder)
    main, rows = is_main(), []  # under torchrun the other ranks only train (and return {})
    for i, (name, kw) in enumerate(condition_list(cfg)):
        parts = [folder.part(f"{mode}/conditions/{i}/seed{seed}", lambda: condition_seed(cfg, kw, seed, mode))
                 for seed in cfg.seeds]
        if not main:
            continue
        runs = [p["run"] for p in parts]
        rows.append({"condition": name, "optimizer": kw.get("optimizer", cfg.optimizer), "lr": kw.get("lr", cfg.lr),
                     "beta": kw.get("beta", cfg.beta), "pretrain_steps": kw.get("pre", cfg.pretrain_steps),
                     "valley_depth": statistics.fmean(p["valley_depth"] for p in parts),
                     "claims": held_counts(judge_dpo(runs)), "squeeze": [squeeze_summary(r) for r in runs]})
        print(f"  {name}: valley {rows[-1]['valley_depth']:.1f} nats/token · " +
              ", ".join(f"{k} {v}" for k, v in rows[-1]["claims"].items()), flush=True)
    if not main:
        return {}
    table = conditions_table(
        [r["condition"] for r in rows],
        [("  optimizer, lr", [f"{r['optimizer']} {r['lr']:.2g}" for r in rows]),
         ("  β", [f"{r['beta']:g}" for r in rows]), ("  pretraining steps", [f"{r['pretrain_steps']:d}" for r in rows]),
         ("  valley depth after SFT", [f"{r['valley_depth']:.1f}" for r in rows])],
        {n: [r["claims"][n] for r in rows] for n in rows[0]["claims"]}, 34, 15)
    folder.write(f"conditions_{mode}.txt", "\n".join(table) + "\n")
    print("\n".join("  " + t for t in table))
    return {"rows": rows, "table": table}
