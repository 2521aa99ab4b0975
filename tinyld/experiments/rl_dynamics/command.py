"""``python -m tinyld rl-dynamics``: each seed (one part of the run, kept as it finishes) makes the SFT model of the
arithmetic task, draws the fixed probes, measures the SFT model's pass@k, then runs RL with each loss; the claims
are judged per seed; the JSON, the claims table and the figure are written. Under torchrun every rank trains (each
SFT and RL step shared) and rank 0 alone measures and writes."""
from __future__ import annotations

import time
from dataclasses import asdict

from tinyld.choose import load_real, model_choice
from tinyld.distributed import is_main
from tinyld.experiments.common import lower_lr
from tinyld.experiments.kit import RunFolder, header, run_in_folder, write_results
from tinyld.experiments.rl_dynamics.claims import judge, table
from tinyld.experiments.rl_dynamics.config import RLDynamicsConfig
from tinyld.experiments.rl_dynamics.tracking import fixed_probes, pass_at_k, rl_run, sft_model
from tinyld.reasoning import Arithmetic
from tinyld.runtime import TinyldError, TrainingDiverged, pick_device, writable_dir

COMMAND = "rl-dynamics"


def outputs(cfg: RLDynamicsConfig) -> list[str]:
    return ["rl_dynamics.json", "claims.txt", "rl_curves.png"]


def run(cfg: RLDynamicsConfig, overwrite: bool = False, resume: bool = False, again: str | None = None) -> dict:
    """RL with verifiable rewards on the arithmetic task, from its SFT model, measured; one run per folder."""
    if not isinstance(cfg, RLDynamicsConfig):
        raise TinyldError(f"run takes an RLDynamicsConfig, got {type(cfg).__name__}")
    pick_device(cfg.device)
    writable_dir("tinyld_out/cache", "model cache folder (./tinyld_out/cache)")
    pool = min(len(Arithmetic(s).pool()) for s in cfg.seeds)
    if cfg.sft_data > pool or cfg.probes > cfg.sft_data:
        raise TinyldError(f"rl-dynamics --sft-data {cfg.sft_data} must be at most the pool ({pool} questions) and "
                          f"at least the {cfg.probes} probe questions it tracks")
    if cfg.per_step > cfg.sft_data:
        raise TinyldError(f"rl-dynamics --per-step {cfg.per_step} asks for more questions per step than the "
                          f"{cfg.sft_data} training questions (--sft-data{', capped by --fast' if cfg.fast else ''})")
    if cfg.real:  # a file that does not load, or has no chat template, is refused before the run folder is made
        _, tok = load_real(model_choice(cfg.model, COMMAND))  # kept in memory: the run's own load is then quick
        tok.chat([{"role": "user", "content": "?"}])
    return run_in_folder(cfg, COMMAND, outputs(cfg), run_in, overwrite, resume, again)


def seed_part(cfg: RLDynamicsConfig, seed: int) -> dict:
    t0 = time.perf_counter()
    task, sft = sft_model(cfg, seed)
    if not is_main():  # under torchrun: train with rank 0 (SFT above, each RL run), measure nothing
        for loss in cfg.losses:
            rl_run(cfg, seed, loss, sft, task, None)
        return {}
    fam = fixed_probes(cfg, task, sft, seed)
    sft_pass = pass_at_k(cfg, sft, task, seed * 7919 + 2)
    print(f"  seed {seed}: SFT model ready; {len(fam['correct'][0])} correct and {len(fam['incorrect'][0])} "
          f"incorrect fixed samples; SFT pass@1 {sft_pass['pass'][0]:.3f}, "
          f"pass@{cfg.passk_n} {sft_pass['pass'][-1]:.3f}")
    runs = {}
    for loss in cfg.losses:
        try:
            runs[loss] = rl_run(cfg, seed, loss, sft, task, fam)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"RL (seed {seed}, {loss}) diverged: {lower_lr(e, cfg.lr)} ({e.fact})", e.fact,
                                   e.updates) from None
        r = runs[loss]
        print(f"  seed {seed}, {loss}: reward {r['rewards'][0]['mean']:.3f} → {r['rewards'][-1]['mean']:.3f}; "
              f"pass@1 {r['pass_at_k']['pass'][0]:.3f}; {r['seconds']} s")
    return {"seed": seed, "fixed": {k: len(v[0]) for k, v in fam.items()}, "max_new_tokens": task.max_new,
            "sft_pass_at_k": sft_pass, "runs": runs, "seconds": round(time.perf_counter() - t0, 1)}


def run_in(cfg: RLDynamicsConfig, folder: RunFolder) -> dict:
    t0 = time.perf_counter()
    header(COMMAND, "RL with verifiable rewards (GRPO, Dr. GRPO) on the word problems: what moves", cfg, asdict(cfg))
    print(f"  from the SFT model of the arithmetic task ({cfg.sft_data} questions, {cfg.sft_epochs} epochs, AdamW "
          f"lr {cfg.sft_lr:g}); RL: {cfg.optimizer} lr {cfg.lr:g} constant, {cfg.steps} steps of {cfg.per_step} "
          f"questions × {cfg.group} samples (temperature {cfg.temperature:g}), clip {cfg.clip:g}, kl {cfg.kl:g}")
    seeds = [folder.part(f"seed{s}", lambda s=s: seed_part(cfg, s)) for s in cfg.seeds]
    if not is_main():
        return {}
    claims = judge(seeds, cfg.losses)
    text = table(claims)
    print("\n" + text)
    result = {"config": asdict(cfg), "versions": folder.manifest.get("versions"), "seeds": seeds,
              "claims": [dict(c) for c in claims]}
    try:
        result["figure"] = figure(seeds, cfg, folder)
    except ImportError as e:
        print(f"  (no figure: {e})")
    return write_results(folder, "rl_dynamics.json", result, text, t0, also="rl_curves.png")


def figure(seeds: list[dict], cfg: RLDynamicsConfig, folder: RunFolder) -> str:
    """Per loss and seed: log π per token of the fixed families, the entropy, the reward of the samples trained on."""
    from tinyld.plots import condition_lines

    series: dict = {f"{k} (per token)": {} for k in ("correct", "incorrect", "reference")}
    series["entropy per token"], series["reward"] = {}, {}
    for s in seeds:
        for loss, r in s["runs"].items():
            label = f"{loss} seed {s['seed']}"
            xs = [p["step"] for p in r["points"]]
            for k in ("correct", "incorrect", "reference"):
                if r["points"][0][k] is not None:
                    series[f"{k} (per token)"][label] = (xs, [sum(p[k]["per_token"]) / len(p[k]["per_token"])
                                                              for p in r["points"]])
            series["entropy per token"][label] = (xs, [p["entropy"] for p in r["points"]])
            series["reward"][label] = ([x["step"] for x in r["rewards"]], [x["mean"] for x in r["rewards"]])
    return str(condition_lines(series, folder.path("rl_curves.png"), "RL on the word problems: fixed samples, "
                               "entropy, reward", xlabel="RL step", ylabel="log π per token"))
