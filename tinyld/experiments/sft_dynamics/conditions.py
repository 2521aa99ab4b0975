"""sft-dynamics ``--conditions``: the claims under other learning rates, gradient clipping switched, plain SGD and a
shallower base model (fewer pretraining steps: a shallower valley). Each (condition, seed) is one part of the run."""
from __future__ import annotations

import copy
import statistics
from pathlib import Path

from tinyld.distributed import is_main
from tinyld.evaluate import valley_depth
from tinyld.experiments.kit import Folder, as_folder, conditions_table, held_counts
from tinyld.experiments.sft_dynamics.claims import judge
from tinyld.experiments.sft_dynamics.config import SFTDynamicsConfig
from tinyld.experiments.sft_dynamics.tracking import setup, sft_run


def conditions_outputs(cfg: SFTDynamicsConfig) -> list[str]:
    return ["conditions.txt", f"conditions_{cfg.modes[0]}.png"]


def condition_list(cfg: SFTDynamicsConfig) -> list[tuple[str, float, int, float]]:
    """(optimizer, lr, pretraining steps, gradient clipping) of each condition; the first is the run's own."""
    shallow = 400 if cfg.pretrain_steps > 400 else max(1, cfg.pretrain_steps // 10)  # 400: the lessons' fast model
    base = (cfg.optimizer, cfg.lr, cfg.pretrain_steps, cfg.grad_clip)
    return [base, (cfg.optimizer, cfg.lr / 3, cfg.pretrain_steps, cfg.grad_clip),
            (cfg.optimizer, cfg.lr * 3, cfg.pretrain_steps, cfg.grad_clip),
            (cfg.optimizer, cfg.lr, cfg.pretrain_steps, 0.0 if cfg.grad_clip else 1.0),
            ("sgd", cfg.attr_lr, cfg.pretrain_steps, 0.0), (cfg.optimizer, cfg.lr, shallow, cfg.grad_clip)]


def condition_seed(cfg: SFTDynamicsConfig, condition: tuple, seed: int, mode: str) -> dict:
    """One seed under one condition: the valley depth of its base model and the tracked SFT run (no attribution).
    Under torchrun the ranks other than 0 only train and return ``{}``."""
    opt, lr, pre, clip = condition
    c = copy.copy(cfg)
    c.pretrain_steps, c.every, c.grad_clip = pre, 0, clip
    model, tok, probes, world = setup(c, seed, mode)
    valley = valley_depth(model, tok) if is_main() else None
    run = sft_run(c, seed, mode, model, tok, probes, world, optimizer=opt, lr=lr)
    return {"valley_depth": valley, "run": run} if is_main() else {}


def conditions(cfg: SFTDynamicsConfig, folder: Folder | Path) -> dict:
    """The claims under each of :func:`condition_list`, in the first mode of ``cfg.modes``: a table (claims ×
    conditions, seeds held), conditions.txt and a figure. Under torchrun the ranks other than 0 only train."""
    folder = as_folder(folder)
    mode = cfg.modes[0]
    print(f"\n== conditions ({mode} mode, {len(cfg.seeds)} seeds, {cfg.epochs} epochs) ==")
    main, rows = is_main(), []  # under torchrun the other ranks only train
    for i, (opt, lr, pre, clip) in enumerate(condition_list(cfg)):
        parts = [folder.part(f"conditions/{i}/seed{seed}", lambda: condition_seed(cfg, (opt, lr, pre, clip), seed,
                                                                                   mode)) for seed in cfg.seeds]
        if not main:
            continue
        runs = [p["run"] for p in parts]
        rows.append({"optimizer": opt, "lr": lr, "grad_clip": clip, "pretrain_steps": pre,
                     "valley_depth": statistics.fmean(p["valley_depth"] for p in parts),
                     "claims": held_counts(judge(runs)),
                     "curves": {f: [statistics.fmean(v) for v in zip(*(r["curves"]["train"][f] for r in runs))]
                                for f in runs[0]["curves"]["train"]},
                     "epochs": [s / runs[0]["steps_per_epoch"] for s in runs[0]["measured_steps"]]})
        print(f"  {r_label(rows[-1])}: done", flush=True)
    if not main:
        return {}
    table = conditions_table(
        [f"{r['optimizer']} {r['lr']:.2g}" for r in rows],
        [("  gradient clipping", [f"{r['grad_clip'] or 'none'}" for r in rows]),
         ("  base model: pretraining steps", [f"{r['pretrain_steps']:d}" for r in rows]),
         ("  valley depth (nats/token)", [f"{r['valley_depth']:.1f}" for r in rows])],
        {n: [r["claims"][n] for r in rows] for n in rows[0]["claims"]}, 38, 14)
    print("\n".join("  " + t for t in table))
    folder.write("conditions.txt", "\n".join(table) + "\n")
    res = {"mode": mode, "rows": rows, "table": table}
    try:
        from tinyld.plots import condition_lines

        keep = [f for f in ("chosen", "rejected", "other_chosen", "test_chosen", "random_tokens", "star")
                if f in rows[0]["curves"]]
        series = {f: {r_label(r): (r["epochs"], r["curves"][f]) for r in rows} for f in keep}
        res["figure"] = str(condition_lines(series, folder.path(f"conditions_{mode}.png"),
                                            f"SFT under conditions ({mode} mode, mean of {len(cfg.seeds)} seeds)"))
    except ImportError as e:
        print(f"  (no figure: {e})")
    return res


def r_label(r: dict) -> str:
    clip = f", clip {r['grad_clip']:g}" if r["grad_clip"] else ""
    return f"{r['optimizer']} {r['lr']:.2g}{clip}, pre {r['pretrain_steps']}"
