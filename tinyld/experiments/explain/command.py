"""``python -m tinyld explain``: the forecasts before training and the watched DPO run, each one part of the run
(kept as it finishes), then the verdict, the summary table, the JSON and the page to open in a browser."""
from __future__ import annotations

import time
from dataclasses import asdict

from tinyld.data import Example
from tinyld.experiments.common import preflight, user_setup
from tinyld.experiments.explain.config import ExplainConfig
from tinyld.experiments.explain.report import report_html
from tinyld.experiments.kit import RunFolder, header, honour_batch_size, run_in_folder, write_json, write_results
from tinyld.explain import ExplainStopped, fixes, forecast_auc, pair_forecasts, watch_dpo
from tinyld.probes import ProbeSet
from tinyld.runtime import TinyldError, pick_device

COMMAND = "explain"


def outputs(cfg: ExplainConfig) -> list[str]:
    """Every file the run may write in ``cfg.out``."""
    return ["explain.json", "claims.txt", "report.html"]


def run(cfg: ExplainConfig, overwrite: bool = False, resume: bool = False, again: str | None = None) -> dict:
    """Explain ``cfg.pairs`` on ``cfg.model``; write the JSON and the summary into ``cfg.out``, one run per folder
    (:class:`~tinyld.experiments.kit.RunFolder`)."""
    if not isinstance(cfg, ExplainConfig):
        raise TinyldError(f"run takes an ExplainConfig, got {type(cfg).__name__}")
    pick_device(cfg.device)
    preflight(cfg, COMMAND, cfg.pairs)  # a bad model or pair file fails now, before the folder
    honour_batch_size(cfg, len(ProbeSet.load(cfg.pairs)), "pairs")
    return run_in_folder(cfg, COMMAND, outputs(cfg), run_in, overwrite, resume, again)


def run_in(cfg: ExplainConfig, folder: RunFolder) -> dict:
    t0 = time.perf_counter()
    header(COMMAND, "where did the probability go? your preference pairs before and during DPO", cfg, asdict(cfg))
    model, tok, probes, _ = user_setup(cfg, cfg.pairs, cfg.seed, init=False)
    pairs = [Example(p.prompt, p.responses["chosen"], p.responses["rejected"]) for p in probes.probes]  # every line
    print(f"  {len(pairs)} pairs from {cfg.pairs}; DPO ({cfg.loss}, β {cfg.beta:g}): {cfg.optimizer}, lr {cfg.lr:g} "
          f"(constant, no clipping), batch {cfg.batch_size}, {cfg.steps} steps, the model as its own reference")
    forecasts = watched = stopped = None
    try:
        forecasts = folder.part("forecasts", lambda: pair_forecasts(model, tok, pairs, cfg.beta, cfg.loss))
        watched = folder.part("run", lambda: watch_dpo(model, tok, pairs, cfg.steps, cfg.lr, cfg.optimizer, cfg.loss,
                                                         cfg.beta, cfg.batch_size, cfg.seed))
    except ExplainStopped as stop:  # Ctrl-C: the page and the JSON show what was measured, and say how far it got
        forecasts, watched = (stop.partial, None) if forecasts is None else (forecasts, stop.partial)
        stopped = stop.stopped
        result = assemble(cfg, folder, pairs, forecasts, watched, stopped)
        folder.write("report.html", report_html(result))
        write_json(folder, "explain.json", result)
        print(f"\n  {stopped}: {folder.out / 'report.html'} and explain.json show what was measured until then")
        raise
    result = assemble(cfg, folder, pairs, forecasts, watched, stopped)
    table = summary_table(pairs, forecasts, watched, result["verdict"], result["fixes"])
    print("\n" + table)
    folder.write("report.html", report_html(result))
    return write_results(folder, "explain.json", result, table, t0, also="report.html (open it in a browser)")


def assemble(cfg: ExplainConfig, folder: RunFolder, pairs: list[Example], forecasts: list[dict] | None,
             watched: dict | None, stopped: str | None) -> dict:
    """The result the JSON and the page hold: the config, the versions, the pairs, what was measured (the
    forecasts, the run: each None, or shorter, when Ctrl-C stopped it: ``stopped`` says where), the verdict and
    the forecasts of the fixes."""
    done = len(forecasts or [])
    verdict = (forecast_auc(forecasts, watched["fell"]) if watched is not None and len(watched["steps"]) > 1
               else None)
    return {"config": asdict(cfg), "versions": folder.manifest.get("versions"),
            "pairs": [{"prompt": e.prompt, "chosen": e.chosen, "rejected": e.rejected} for e in pairs],
            "forecasts": forecasts, "run": watched, "verdict": verdict, "fixes": fixes(forecasts) if done else None,
            "stopped": stopped}


def summary_table(pairs: list[Example], forecasts: list[dict], watched: dict, verdict: dict, fixes: list[dict]) -> str:
    """One line per pair: log π(y⁺) before → after, the change of y⁻, CHES and the one-step forecast of y⁺'s change
    (per unit lr: the pull of y⁺'s half, the push of y⁻'s half), and whether y⁺ fell; then how well each forecast
    ranked the pairs that fell, and what the forecast predicts for each fix."""
    lines = [f"{'pair':>4}  {'log π(y⁺) before → after':>25}  {'Δ y⁻':>7}  {'CHES':>9}  "
             f"{'forecast Δ y⁺ = pull + push (per unit lr)':>42}  y⁺ fell"]
    for k, (f, p) in enumerate(zip(forecasts, watched["pairs"])):
        s = f["step_chosen"]
        lines.append(f"{k:>4}  {p['chosen'][0]:>11.2f} → {p['chosen'][-1]:>10.2f}  "
                     f"{p['rejected'][-1] - p['rejected'][0]:>+7.2f}  {f['ches']:>9.3g}  "
                     f"{s['total']:>+12.4g} = {s['pull']:>+12.4g} {s['push']:>+12.4g}  "
                     f"{'yes' if watched['fell'][k] else 'no'}")
    n = verdict
    auc = lambda k: "n/a (all fell or none did)" if n[k] is None else f"{n[k]:.2f}"  # noqa: E731
    lines.append(f"y⁺ fell in {n['fell']} of {n['of']} pairs. AUC for 'y⁺ falls' (1 = every fallen pair ranked first, "
                 f"0.5 = chance): CHES {auc('ches')}, length-normalised CHES {auc('ches_norm')}, one-step forecast "
                 f"{auc('step')}")
    lines.append("What the one-step forecast predicts for each fix (mean over the pairs, per unit lr; a forecast, "
                 "not advice):")
    lines += [f"  {x['what']:<58} Δ y⁺ {x['chosen']:>+11.4g}  Δ y⁻ {x['rejected']:>+11.4g}  "
              f"y⁺ forecast to fall in {x['fall']} of {x['of']}" for x in fixes]
    return "\n".join(lines)
