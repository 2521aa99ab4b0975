"""dpo-dynamics ``--experiment on-policy``: from the same SFT model, DPO whose pairs are sampled from the current
policy every epoch and ranked by the world's oracle, against off-policy DPO. Each seed is one part of the run."""
from __future__ import annotations

from pathlib import Path

from tinyld.distributed import is_main
from tinyld.experiments.dpo_dynamics.claims import dpo_change_fmt, squeeze_summary
from tinyld.experiments.dpo_dynamics.config import DPODynamicsConfig
from tinyld.experiments.dpo_dynamics.stages import base, dpo, probes_for, sft, sft_steps
from tinyld.experiments.kit import Folder, add_claim, as_folder


def on_policy_seed(cfg: DPODynamicsConfig, seed: int, mode: str, off_run: dict | None) -> dict:
    """One seed: the SFT stage, then on-policy DPO, and off-policy DPO unless ``off_run`` (the dynamics
    experiment's run of this seed) is given. Under torchrun the ranks other than 0 only train and return ``{}``."""
    model, tok, world = base(cfg, seed, mode)
    items = world.train_items()
    model = sft(cfg, seed, model, tok, [it.example() for it in items], sft_steps(cfg, len(items)))
    probes = probes_for(model, tok, world)
    if off_run is None:
        off_run = dpo(cfg, seed, model, tok, probes, world, dense=True)
    on_run = dpo(cfg, seed, model, tok, probes, world, on_policy=True)
    if not is_main():
        return {}
    on_run.pop("models")
    return {"seed": seed, "off": squeeze_summary(off_run), "on": squeeze_summary(on_run),
            "pairs_per_round": on_run["pairs_per_round"], "on_run": on_run}


def run_on_policy(cfg: DPODynamicsConfig, mode: str, folder: Folder | Path, off: dict | None = None) -> dict:
    """On- against off-policy DPO from the same SFT model, every seed one part. ``off``: :func:`run_dynamics`'s
    result for the same config and mode, whose off-policy runs are reused (on ranks other than 0 it is ``{}``, and
    nothing is run for them); None: run them here."""
    folder = as_folder(folder)
    main, per_seed = is_main(), []  # under torchrun the other ranks only train (and return {})
    for i, seed in enumerate(cfg.seeds):
        off_run = None if off is None else off.get("runs", [{}] * len(cfg.seeds))[i]
        rec = folder.part(f"{mode}/on-policy/seed{seed}", lambda: on_policy_seed(cfg, seed, mode, off_run))
        if not main:
            continue
        per_seed.append(rec)
        print(f"  seed {seed}: y* off {rec['off']['star']:+.1f} / on {rec['on']['star']:+.1f}, y⁺ off "
              f"{rec['off']['chosen']:+.1f} / on {rec['on']['chosen']:+.1f}, families falling off "
              f"{rec['off']['falling']} / on {rec['on']['falling']} · on-policy pairs per round "
              f"{rec['pairs_per_round']}", flush=True)
    if not main:
        return {}
    claims = []
    add_claim(claims, "on-policy: y* rises less", "sampling y⁻ from the policy squeezes less: y* rises less",
              [{"change": r["on"]["star"] - r["off"]["star"], "held": r["on"]["star"] < r["off"]["star"]}
               for r in per_seed], dpo_change_fmt)
    add_claim(claims, "on-policy: fewer families fall", "fewer responses lose probability",
              [{"change": r["on"]["falling"] - r["off"]["falling"], "held": r["on"]["falling"] < r["off"]["falling"]}
               for r in per_seed], dpo_change_fmt)
    add_claim(claims, "on-policy: less argmax gain at y⁻", "less mass is squeezed into the argmax at y⁻ positions",
              [{"change": r["on"]["argmax_gain_rejected"] - r["off"]["argmax_gain_rejected"],
                "held": r["on"]["argmax_gain_rejected"] < r["off"]["argmax_gain_rejected"]} for r in per_seed],
              dpo_change_fmt)
    return {"claims": claims, "per_seed": per_seed}
