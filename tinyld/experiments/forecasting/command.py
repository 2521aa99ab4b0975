"""``python -m tinyld forecast``: the experiments chosen, each seed or sweep run one part of the run (kept as it
finishes), then the claims tables, the figures and the JSON."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict

from tinyld.experiments.forecasting.ches import ches_seed, judge_ches, print_ches_seed
from tinyld.experiments.forecasting.config import EXPERIMENTS, ForecastConfig
from tinyld.experiments.forecasting.curate import curate_seed, judge_curate
from tinyld.experiments.forecasting.sweep import judge_perturb, judge_sweep, ols, points_of, sweep_seed
from tinyld.experiments.kit import RunFolder, claims_table, header, run_in_folder, write_results
from tinyld.reasoning import Arithmetic
from tinyld.runtime import TinyldError, pick_device, writable_dir

COMMAND = "forecast"


def chosen(cfg: ForecastConfig) -> set[str]:
    """The experiments the run does."""
    return set(EXPERIMENTS[:-1]) if cfg.experiment == "all" else {cfg.experiment}


def outputs(cfg: ForecastConfig) -> list[str]:
    """Every file the run may write in ``cfg.out``."""
    want, names = chosen(cfg), ["forecast.json", "claims.txt"]
    if want & {"sweep", "perturb"}:
        names += ["pm_scatter.png", "r2_by_tau.png"]
    return names + (["curation.png"] if "curate" in want else []) + (["ches.png"] if "ches" in want else [])


def run(cfg: ForecastConfig, overwrite: bool = False, resume: bool = False, again: str | None = None) -> dict:
    """Run the experiments of ``cfg``; write JSON, claims and figures into ``cfg.out``, one run per folder
    (:class:`~tinyld.experiments.kit.RunFolder`: ``overwrite``, ``resume``, ``again`` as there)."""
    if not isinstance(cfg, ForecastConfig):
        raise TinyldError(f"run takes a ForecastConfig, got {type(cfg).__name__}")
    check_inputs(cfg)
    return run_in_folder(cfg, COMMAND, outputs(cfg), run_in, overwrite, resume, again)


def check_inputs(cfg: ForecastConfig) -> None:
    """What can be refused before any work: the device, the model cache folder, and data sizes against every
    seed's question pool."""
    pick_device(cfg.device)
    writable_dir("tinyld_out/cache", "model cache folder (./tinyld_out/cache)")
    want = chosen(cfg)
    pool = min(len(Arithmetic(s).pool()) for s in cfg.seeds)
    if want & {"sweep", "perturb"} and max(cfg.data) > pool:
        raise TinyldError(f"forecast --data asks for {max(cfg.data)} training questions; the pool has {pool}")
    need = cfg.curate_start + cfg.curate_rounds * cfg.curate_add
    if "curate" in want and need > pool:
        raise TinyldError(f"forecast curation needs {need} questions ({cfg.curate_start} + {cfg.curate_rounds} × "
                          f"{cfg.curate_add}); the pool has {pool}")


def run_in(cfg: ForecastConfig, folder: RunFolder) -> dict:
    t0 = time.perf_counter()
    want = chosen(cfg)
    header(COMMAND, "forecasting what finetuning will do: pre-memorization accuracy and CHES (paper §5)", cfg,
           asdict(cfg))
    result: dict = {"config": asdict(cfg), "versions": folder.manifest["versions"]}
    texts = []
    if want & {"sweep", "perturb"}:
        print(f"== sweep: SFT (AdamW, cosine, no clipping), lr {cfg.lrs}, epochs {cfg.epochs}, questions {cfg.data}, "
              f"seeds {cfg.seeds}; {cfg.samples} samples at T={cfg.temperature:g} per question and epoch ==")
        seeds = [sweep_seed(cfg, s, "perturb" in want, folder) for s in cfg.seeds]
        result["sweep"] = {"seeds": seeds, "judged": judge_sweep(cfg, seeds)}
        j = result["sweep"]["judged"]
        print(f"  R² of test accuracy on PM train accuracy (τ = {cfg.tau:g}): {j['r2_pm']['mean']:.2f} ± "
              f"{j['r2_pm']['sd']:.2f}; on plain train accuracy: {j['r2_train']['mean']:.2f} ± "
              f"{j['r2_train']['sd']:.2f}")
        print("  R² on PM train accuracy against τ (mean over seeds): " + ", ".join(
            f"{t} → {v['mean']:.2f}" for t, v in j["r2_by_tau"].items()))
        other = j["calibrated"]["r2_other_seeds"]["mean"]
        print(f"  τ calibrated on seed {j['calibrated']['on_seed']}: {j['calibrated']['tau']:g}; R² on the other "
              f"seeds {'—' if other is None else f'{other:.2f}'}")
        texts.append(claims_table(j["claims"], "dataset level (R² per seed: PM vs train acc)", 52, ""))
        print(texts[-1])
        if "perturb" in want:
            result["perturb"] = judge_perturb(cfg, seeds)
            texts.append(claims_table(result["perturb"]["claims"], "per example (accuracy change: high-PM vs "
                                      "low-PM)", 52, ""))
            print(texts[-1])
    if "curate" in want:
        print(f"== curation: {cfg.curate_start} questions + {cfg.curate_rounds} rounds of {cfg.curate_add}, SFT "
              f"AdamW lr {cfg.curate_lr:g} for {cfg.curate_epochs} epochs ==")
        seeds = [folder.part(f"curate/seed{s}", lambda: curate_seed(cfg, s)) for s in cfg.seeds]
        result["curate"] = {"seeds": seeds, **judge_curate(seeds)}
        texts.append(claims_table(result["curate"]["claims"], "data curation (efficiency ratio)", 52, ""))
        print(texts[-1])
    if "ches" in want:
        print(f"== CHES: DPO (sigmoid, β {cfg.ches_beta:g}), AdamW lr {cfg.ches_lr:g}, {cfg.ches_steps} steps on each "
              "pair alone, from the SFT model of the fact world ==")
        seeds = []
        for s in cfg.seeds:
            seeds.append(folder.part(f"ches/seed{s}", lambda: ches_seed(cfg, s)))
            print_ches_seed(seeds[-1])
        result["ches"] = {"seeds": seeds, **judge_ches(seeds)}
        texts.append(claims_table(result["ches"]["claims"], "CHES (AUC for 'log π(y⁺) falls': score vs edit "
                                  "distance)", 52, ""))
        print(texts[-1])
    try:
        result["figures"] = figures(cfg, result, folder)
    except ImportError as e:
        print(f"  (no figures: {e})")
    return write_results(folder, "forecast.json", result, "\n\n".join(texts), t0)


def figures(cfg: ForecastConfig, result: dict, folder: RunFolder) -> dict:
    """The figures of the experiments run: the PM scatter and R² against τ, curation, CHES."""
    from tinyld.plots import fit_panels, lines

    figs = {}
    if "sweep" in result:
        seeds = result["sweep"]["seeds"]
        pts = [points_of(s, cfg.tau) for s in seeds]
        x_pm = [v for p in pts for v in p["pm"]]
        x_tr = [v for p in pts for v in p["train"]]
        y = [v for p in pts for v in p["test"]]
        labels = [lab for p in pts for lab in p["label"]]
        figs["scatter"] = str(fit_panels(
            {f"pre-memorization train accuracy (τ = {cfg.tau:g})": (x_pm, y, ols(x_pm, y)),
             "train accuracy": (x_tr, y, ols(x_tr, y))}, folder.path("pm_scatter.png"),
            f"test accuracy, every (run, checkpoint), {len(seeds)} seeds pooled", "test accuracy", labels))
        taus = [float(t) for t in result["sweep"]["judged"]["r2_by_tau"]]
        figs["r2_by_tau"] = str(lines(taus, {"R² (PM), mean over seeds": [
            result["sweep"]["judged"]["r2_by_tau"][str(t)]["mean"] for t in taus]}, folder.path("r2_by_tau.png"),
            "R² of test accuracy on PM train accuracy against τ", xlabel="τ (memorized: perplexity < exp(e^τ))",
            ylabel="R²"))
    if "curate" in result:
        s0 = result["curate"]["seeds"]
        figs["curate"] = str(lines(s0[0]["iid"]["size"], {
            "like low-PM (mean over seeds)": [statistics.fmean(s["curated"]["test_acc"][i] for s in s0)
                                              for i in range(len(s0[0]["iid"]["size"]))],
            "i.i.d. (mean over seeds)": [statistics.fmean(s["iid"]["test_acc"][i] for s in s0)
                                         for i in range(len(s0[0]["iid"]["size"]))]},
            folder.path("curation.png"), "test accuracy as questions are added", xlabel="training questions",
            ylabel="test accuracy"))
    if "ches" in result:
        ps = [p for s in result["ches"]["seeds"] for p in s["pairs"]]
        ch = [p["change"] for p in ps]
        panels = {}
        for key, label in (("ches", "CHES (sum)"), ("ches_norm", "CHES (length-normalised)"),
                           ("edit", "token edit distance")):
            x = [p[key] for p in ps]
            panels[label] = (x, ch, ols(x, ch))
        title = f"change of log π(y⁺) after {cfg.ches_steps} DPO steps on one pair"
        figs["ches"] = str(fit_panels(panels, folder.path("ches.png"), title, "Δ log π(y⁺) (nats)",
                                      [p["kind"] for p in ps]))
    return figs

