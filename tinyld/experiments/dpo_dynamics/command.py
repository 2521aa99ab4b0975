"""``python -m tinyld dpo-dynamics``: the experiments chosen, each seed one part of the run (kept as it finishes),
then the claims tables and the JSON."""
from __future__ import annotations

import time
from dataclasses import asdict

from tinyld.distributed import is_main
from tinyld.experiments.common import is_real, preflight, real_note
from tinyld.experiments.dpo_dynamics.claims import claims_table
from tinyld.experiments.dpo_dynamics.conditions import run_conditions
from tinyld.experiments.dpo_dynamics.config import EXPERIMENTS, DPODynamicsConfig
from tinyld.experiments.dpo_dynamics.dynamics import run_dynamics
from tinyld.experiments.dpo_dynamics.extend import run_extend
from tinyld.experiments.dpo_dynamics.on_policy import run_on_policy
from tinyld.experiments.kit import RunFolder, header, honour_batch_size, run_in_folder, write_results
from tinyld.runtime import TinyldError, pick_device

COMMAND = "dpo-dynamics"


def chosen(cfg: DPODynamicsConfig) -> set[str]:
    """The experiments the run does."""
    return {cfg.experiment} if cfg.experiment != "all" else set(EXPERIMENTS) - {"all"}


def modes_of(cfg: DPODynamicsConfig) -> list[str]:
    """The modes the run measures: the world's, or ``user`` for your own pairs."""
    return ["user"] if cfg.pairs else cfg.modes


def outputs(cfg: DPODynamicsConfig) -> list[str]:
    """Every file the run may write in ``cfg.out``."""
    want, names = chosen(cfg), ["dpo_dynamics.json", "claims.txt"]
    for mode in modes_of(cfg):
        if want & {"dynamics", "on-policy"}:
            names += [f"fig4_{mode}.png", f"mass_{mode}.png"]
        if "extend" in want:
            names.append(f"extend_{mode}.png")
    return names + ([f"conditions_{cfg.modes[0]}.txt"] if "conditions" in want else [])


def run(cfg: DPODynamicsConfig, overwrite: bool = False, resume: bool = False, again: str | None = None) -> dict:
    """Run the experiments of ``cfg``; write JSON, claims and figures into ``cfg.out``, one run per folder
    (:class:`~tinyld.experiments.kit.RunFolder`: ``overwrite``, ``resume``, ``again`` as there). Under torchrun the
    ranks other than 0 only join the training runs and return ``{}``."""
    if not isinstance(cfg, DPODynamicsConfig):
        raise TinyldError(f"run takes a DPODynamicsConfig, got {type(cfg).__name__}")
    pick_device(cfg.device)
    pairs = preflight(cfg, COMMAND, cfg.pairs)  # a bad model or pair file fails now, before the folder
    honour_batch_size(cfg, pairs, "training pairs")
    return run_in_folder(cfg, COMMAND, outputs(cfg), run_in, overwrite, resume, again)


def run_in(cfg: DPODynamicsConfig, folder: RunFolder) -> dict:
    t0 = time.perf_counter()
    want = chosen(cfg)
    header(COMMAND, "what DPO does to every answer, squeezing, extend, on-policy (paper §3–§4)", cfg, asdict(cfg))
    print(f"  SFT then DPO ({cfg.loss}, β {cfg.beta:g}): {cfg.optimizer}, lr {cfg.lr:g} (constant, no clipping), "
          f"batch {cfg.batch_size}, {cfg.sft_epochs} SFT + {cfg.dpo_epochs} DPO epochs, seeds {cfg.seeds}")
    result = {"config": asdict(cfg), "versions": folder.manifest.get("versions"), "modes": {}}
    texts = []
    main = is_main()  # under torchrun the other ranks join every training run and measure and write nothing

    def table(res: dict, title: str) -> None:
        if main:
            texts.append(claims_table(res["claims"], title))
            print(texts[-1])

    if is_real(cfg) or cfg.pairs:
        print(real_note(cfg) if is_real(cfg) else f"  your own pairs: {cfg.pairs}, every line measured")
    for mode in modes_of(cfg):
        res = result["modes"][mode] = {}
        if want & {"dynamics", "on-policy"}:
            print(f"\n== off-policy DPO dynamics, {'your pairs' if mode == 'user' else mode + ' world'} ==")
            res["dynamics"] = run_dynamics(cfg, mode, folder)
            if main:
                print_regime(res["dynamics"]["regime_before_dpo"])
            table(res["dynamics"], f"off-policy DPO, {mode} world")
        if "on-policy" in want:
            print(f"\n== on-policy vs off-policy DPO, {mode} world ==")
            res["on_policy"] = run_on_policy(cfg, mode, folder, res.get("dynamics"))
            table(res["on_policy"], f"on-policy vs off-policy, {mode} world")
        if "extend" in want:
            print(f"\n== extend vs baseline, {mode} world ==")
            res["extend"] = run_extend(cfg, mode, folder)
            table(res["extend"], f"extend vs baseline, {mode} world")
        if "conditions" in want and mode == cfg.modes[0]:
            print(f"\n== conditions, {mode} world ==")
            res["conditions"] = run_conditions(cfg, mode, folder)
    if not main:
        return {}
    return write_results(folder, "dpo_dynamics.json", result, "\n\n".join(texts), t0)


def print_regime(reg: dict) -> None:
    print(f"  regime before DPO (mean ± sd): log π(y⁺) {reg['logp_chosen']['mean']:.1f} ± "
          f"{reg['logp_chosen']['sd']:.1f}, y* ≠ y⁺ at {reg['ystar_differs']['mean']:.2f} of positions, "
          f"valley depth {reg['valley_depth']['mean']:.1f} ± {reg['valley_depth']['sd']:.1f} nats/token")
