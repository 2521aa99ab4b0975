"""``python -m tinyld sft-dynamics``: every seed of every mode as one part of the run (kept as it finishes), then
the claims, the tables, the figures and the JSON."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict

from tinyld.distributed import is_main
from tinyld.experiments.common import figure, first_step_line, is_real, preflight, real_note, regime
from tinyld.experiments.kit import (RunFolder, claims_table, header, honour_batch_size, run_in_folder, summary,
                                    write_results)
from tinyld.experiments.sft_dynamics.attribution import attribution
from tinyld.experiments.sft_dynamics.claims import judge
from tinyld.experiments.sft_dynamics.conditions import conditions, conditions_outputs
from tinyld.experiments.sft_dynamics.config import SFTDynamicsConfig
from tinyld.experiments.sft_dynamics.tracking import first_sft_step, setup, sft_run
from tinyld.runtime import TinyldError, pick_device
from tinyld.world import ANSWER_KINDS

COMMAND = "sft-dynamics"


def modes_of(cfg: SFTDynamicsConfig) -> list[str]:
    """The modes the run measures: the world's, or ``user`` for your own probes."""
    return ["user"] if cfg.probes else cfg.modes


def outputs(cfg: SFTDynamicsConfig) -> list[str]:
    """Every file the run may write in ``cfg.out``."""
    names = ["sft_dynamics.json", "claims.txt"]
    for mode in modes_of(cfg):
        names += [f"track_{mode}_seed{seed}.csv" for seed in cfg.seeds] + [f"fig3_{mode}.png"]
    return names + (conditions_outputs(cfg) if cfg.conditions else [])


def run(cfg: SFTDynamicsConfig, overwrite: bool = False, resume: bool = False, again: str | None = None) -> dict:
    """Run the experiment with ``cfg.threads`` CPU threads; write JSON, tables and figures into ``cfg.out``, one run
    per folder (:class:`~tinyld.experiments.kit.RunFolder`: ``overwrite`` replaces the run there, ``resume``
    continues it; ``again`` is the command said when it stops early). Under torchrun the ranks other than 0 only
    join the training runs and return ``{}``."""
    if not isinstance(cfg, SFTDynamicsConfig):
        raise TinyldError(f"run takes an SFTDynamicsConfig, got {type(cfg).__name__}")
    pick_device(cfg.device)  # an unavailable device fails now, not after the first seed
    prompts = preflight(cfg, COMMAND, cfg.probes)  # a bad model or probe file fails now, before the folder
    honour_batch_size(cfg, prompts, "training prompts")
    return run_in_folder(cfg, COMMAND, outputs(cfg), run_in, overwrite, resume, again)


def seed_part(cfg: SFTDynamicsConfig, seed: int, mode: str, first_mode: bool, folder: RunFolder) -> dict:
    """One seed of one mode: the regime before SFT, the tracked SFT run and (first mode only; in fast mode first
    seed only) the attribution run. Under torchrun the ranks other than 0 only train and return ``{}``."""
    model, tok, probes, world = setup(cfg, seed, mode)
    attributes = cfg.attribution and first_mode and not (cfg.fast and seed != cfg.seeds[0])
    if not is_main():
        sft_run(cfg, seed, mode, model, tok, probes, world)
        if attributes:
            attribution(cfg, seed, model, tok, probes)
        return {}
    part = {"regime": regime(model, tok, probes, world)}
    if is_real(cfg):  # the learning rate chosen for a real LLM: is one step at it first order?
        part["first_step"] = first_sft_step(cfg, seed, model, tok, probes, world)
    part["run"] = sft_run(cfg, seed, mode, model, tok, probes, world,
                          track=folder.path(f"track_{mode}_seed{seed}.csv"))
    if attributes:
        part["attribution"] = attribution(cfg, seed, model, tok, probes)
    return part


def run_in(cfg: SFTDynamicsConfig, folder: RunFolder) -> dict:
    t0 = time.perf_counter()
    modes = modes_of(cfg)
    header(COMMAND, "what SFT does to every other answer (paper §4, Fig. 3)", cfg, asdict(cfg))
    if is_real(cfg):
        print(real_note(cfg, "the SGD attribution run (per-example JVPs of a 135M model) is skipped"))
    clip = f"gradient norm clipped at {cfg.grad_clip:g}" if cfg.grad_clip else "no gradient clipping"
    print(f"  SFT: {cfg.optimizer}, lr {cfg.lr:g} (constant), {clip}, batch {cfg.batch_size}, {cfg.epochs} epochs, "
          f"seeds {cfg.seeds}; loss −log π(y⁺|x) summed over the response")
    result = {"config": asdict(cfg), "versions": folder.manifest.get("versions"), "modes": {}}
    main = is_main()  # under torchrun the other ranks join every training run below and measure nothing
    for mode in modes:
        print(f"\n== {mode} ==" + ("" if mode == "user" else f" (world mode {mode!r})"))
        parts = []
        for seed in cfg.seeds:
            parts.append(folder.part(f"{mode}/seed{seed}", lambda: seed_part(cfg, seed, mode, mode == modes[0],
                                                                             folder)))
            if main:
                print_seed(seed, parts[-1])
        if not main:
            continue
        runs = [p["run"] for p in parts]
        res = {"regime": summary([p["regime"] for p in parts]), "regime_per_seed": [p["regime"] for p in parts],
               "claims": judge(runs), "runs": runs}
        if any("first_step" in p for p in parts):
            res["first_step"] = [p["first_step"] for p in parts]
        if any("attribution" in p for p in parts):
            res["attribution"] = [p["attribution"] for p in parts if "attribution" in p]
        result["modes"][mode] = res
        print_mode(mode, res, cfg)
        try:
            res["figure"] = str(figure(runs, folder.path(f"fig3_{mode}.png"), f"SFT, {mode} world ({cfg.optimizer}, "
                                       f"lr {cfg.lr:g}, {cfg.epochs} epochs, {len(runs)} seeds)"))
        except ImportError as e:
            print(f"  (no figure: {e})")
    if cfg.conditions:
        result["conditions"] = conditions(cfg, folder)
    if not main:
        return {}
    text = "\n\n".join(claims_table(m["claims"], f"claims, {k} mode ({cfg.optimizer}, lr {cfg.lr:g})")
                       for k, m in result["modes"].items())
    return write_results(folder, "sft_dynamics.json", result, text, t0, also="figures and track_*.csv")


def print_seed(seed: int, part: dict) -> None:
    reg, r = part["regime"], part["run"]
    line = (f"  seed {seed}: log π(y⁺) {reg['logp_chosen']:.1f} → {r['curves']['train']['chosen'][-1]:.1f} · "
            f"tracker {r['seconds']['tracker']:.1f} s = {100 * r['tracker_cost']:.0f}% of training "
            f"{r['seconds']['train']:.1f} s")
    if "first_step" in part:
        line += "\n" + first_step_line(part["first_step"], f"{r['optimizer']} lr {r['lr']:g}")
    if "attribution" in part:
        a = part["attribution"]
        line += f" · attribution R² {num(a['r2'], '.3f')} ({a['seconds']:.1f} s)"
    print(line, flush=True)


def print_mode(mode: str, res: dict, cfg: SFTDynamicsConfig) -> None:
    reg = res["regime"]
    f = lambda k, p=2: f"{reg[k]['mean']:.{p}f} ± {reg[k]['sd']:.{p}f}"  # noqa: E731
    print(f"  regime before SFT (train prompts, mean ± sd over seeds): log π(y⁺) {f('logp_chosen', 1)} nats "
          f"({f('logp_chosen_per_token')} per token); y* ≠ y⁺ at {f('ystar_differs')} of positions; "
          f"valley depth {f('valley_depth', 1)} nats/token")
    if "answered_fact_correctly" in reg:
        print(f"  answered before SFT: fact correct {f('answered_fact_correctly')}, whole answer exact "
              f"{f('answered_exactly')}")
    costs = [r["tracker_cost"] for r in res["runs"]]
    print(f"  tracker cost: {100 * statistics.fmean(costs):.0f}% of training time (every {res['runs'][0]['every']}"
          f" steps, {len(res['runs'][0]['measured_steps'])} measurements)")
    print(claims_table(res["claims"], f"  claims ({cfg.optimizer}, lr {cfg.lr:g}):"))
    if res["runs"][0].get("generations"):
        print_generations(res["runs"])
    if res.get("attribution"):
        print_attribution(res["attribution"], cfg)


def print_generations(runs: list[dict]) -> None:
    print("  greedy answers per epoch (summed over seeds): correct / wrong value / other question's answer / other")
    for split in ("train", "test"):
        g0 = runs[0]["generations"]
        row, n = [], len(g0["epochs"])
        show = sorted({e for e in {0, 1, 2, n - 1} | set(range(0, n, max(1, n // 5))) if e < n})  # JSON: all
        for e in show:
            c = {k: sum(r["generations"]["counts"][split][e][k] for r in runs) for k in ANSWER_KINDS}
            row.append("/".join(str(c[k]) for k in ANSWER_KINDS))
        print(f"    {split:5s} " + "  ".join(f"ep{g0['epochs'][e]}:{x}" for e, x in zip(show, row)))


def print_attribution(a: list[dict], cfg: SFTDynamicsConfig) -> None:
    share = [p["from_j"] / p["predicted"] for x in a for p in x["probes"]
             if p["from_j"] is not None and abs(p["predicted"]) > 1e-9]
    top = sum(p["top_is_j"] for x in a for p in x["probes"])
    n = sum(len(x["probes"]) for x in a)
    who = (f"the example (x_j, y_j⁺) is the top contributor to y_{{j≠u}}⁺ under x_u for {top}/{n} probes; its "
           f"share of the predicted change {statistics.fmean(share):.2f} (mean); " if share else "")
    print(f"  attribution (SGD, lr {cfg.attr_lr:g}, {a[0]['steps']} steps): {who}summed predictions vs actual "
          "curve: R² " + ", ".join(num(x["r2"], ".3f") for x in a) + "; final relative error "
          + ", ".join(num(x["final_rel_err"], ".2f") for x in a))


def num(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)
