"""dpo-dynamics ``--experiment dynamics``: SFT on y⁺, then off-policy DPO on the world's pairs with the SFT model as
reference, every family tracked, the mass followed at y⁺ and y⁻ positions, greedy answers for the repeater. Each
seed is one part of the run."""
from __future__ import annotations

import statistics
from pathlib import Path

from tinyld.distributed import is_main
from tinyld.experiments.common import figure, first_step_line, is_real, regime, user_setup, world_examples
from tinyld.experiments.dpo_dynamics.claims import judge_dpo, squeeze_summary
from tinyld.experiments.dpo_dynamics.config import DPODynamicsConfig
from tinyld.experiments.dpo_dynamics.stages import base, dpo, probes_for, sft, sft_steps
from tinyld.experiments.kit import Folder, as_folder, summary
from tinyld.squeeze import MASS_CLASSES
from tinyld.world import ANSWER_KINDS


def dynamics_seed(cfg: DPODynamicsConfig, seed: int, mode: str) -> dict:
    """One seed: the SFT stage, the regime before DPO and the DPO run (dense: every step of the first epoch).
    Under torchrun the ranks other than 0 only train and return ``{}``."""
    if cfg.pairs is not None:  # your own pairs: the model as --model names it, no world
        model, tok, probes, world = user_setup(cfg, cfg.pairs, seed, init=False)
        examples = probes.examples("train")
    else:
        model, tok, world = base(cfg, seed, mode)
        examples = world_examples(cfg, tok, world)
    model = sft(cfg, seed, model, tok, examples, sft_steps(cfg, len(examples)))
    probes = probes.with_init(model, tok) if cfg.pairs is not None else probes_for(model, tok, world, cfg)
    reg = regime(model, tok, probes, world) if is_main() else None
    r = dpo(cfg, seed, model, tok, probes, world, dense=True, examples=examples, check=is_real(cfg))
    if not is_main():
        return {}
    r.pop("models")
    return {"regime": reg, "run": r}


def run_dynamics(cfg: DPODynamicsConfig, mode: str, folder: Folder | Path) -> dict:
    """Every seed (:func:`dynamics_seed`), the claims and the figures. Under torchrun the ranks other than 0 only
    train (and return ``{}``)."""
    folder = as_folder(folder)
    main, parts = is_main(), []
    for seed in cfg.seeds:
        parts.append(folder.part(f"{mode}/dynamics/seed{seed}", lambda: dynamics_seed(cfg, seed, mode)))
        if main:
            r, s = parts[-1]["run"], squeeze_summary(parts[-1]["run"])
            print(f"  seed {seed}: y⁻ {s['rejected']:+.1f}, y⁺ {s['chosen']:+.1f}, y* {s['star']:+.1f} nats · "
                  f"{s['falling']}/{s['families']} families fall · {r['seconds']} s", flush=True)
            if r.get("first_step"):
                print(first_step_line(r["first_step"], f"DPO ({cfg.optimizer} lr {cfg.lr:g}, β {cfg.beta:g})"))
    if not main:
        return {}
    runs, regimes = [p["run"] for p in parts], [p["regime"] for p in parts]
    if runs[0]["answer_classes"]["train"]:
        print_answer_classes(runs)
    res = {"regime_before_dpo": summary(regimes), "regime_per_seed": regimes, "claims": judge_dpo(runs), "runs": runs}
    try:
        res["figure"] = str(figure(runs, folder.path(f"fig4_{mode}.png"), f"off-policy DPO, {mode} world ("
                                   f"{runs[0]['loss']} β {cfg.beta:g}, {cfg.optimizer} lr {cfg.lr:g}, {len(runs)} "
                                   "seeds)"))
        res["mass_figure"] = str(mass_figure(runs, folder.path(f"mass_{mode}.png"),
                                             f"where the mass goes, {mode} world"))
    except ImportError as e:
        print(f"  (no figure: {e})")
    return res


def mass_figure(runs: list[dict], path: Path, title: str) -> Path:
    """Mean mass (over positions, then seeds) of the argmax, y⁺'s token, y⁻'s token and the rest, at the positions
    of y⁺ and of y⁻, per DPO epoch."""
    from tinyld.plots import condition_lines

    names = {"own": "own token", "other": "the other response's token", "argmax": "argmax (if neither)",
             "rest": "rest"}
    series = {}
    for half, label in (("chosen", "at y⁺ positions"), ("rejected", "at y⁻ positions")):
        series[label] = {names[k]: (runs[0]["mass_epochs"], [statistics.fmean(r["mass"][i][half][k] for r in runs)
                                                             for i in range(len(runs[0]["mass"]))])
                         for k in MASS_CLASSES}
    return condition_lines(series, path, title, xlabel="DPO epoch", ylabel="probability (mean over positions)")



def print_answer_classes(runs: list[dict]) -> None:
    """The greedy answers' classes after every DPO epoch, summed over seeds."""
    print("  greedy answers per DPO epoch (summed over seeds): correct / wrong value / other question's answer / other")
    for split in ("train", "test"):
        cells = [f"ep{e:g}:" + "/".join(str(sum(r["answer_classes"][split][i][k] for r in runs)) for k in ANSWER_KINDS)
                 for i, e in enumerate(runs[0]["mass_epochs"])]
        print(f"    {split:5s} " + "  ".join(cells))
