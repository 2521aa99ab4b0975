"""forecast ``sweep`` and ``perturb``: SFT runs under every (data, epochs, lr), measured at every epoch, and the
dataset-level and per-example claims of pre-memorization train accuracy (Kang et al.). Each run is one part."""
from __future__ import annotations

import copy
import math
import statistics
import time

import torch

from tinyld.data import PairData
from tinyld.evaluate import sampled_answers
from tinyld.experiments.common import lower_lr
from tinyld.experiments.forecasting.config import MAX_NEW, ForecastConfig
from tinyld.experiments.kit import RunFolder, add_claim, dash
from tinyld.forecast import memorized, pre_memorization_accuracy, solution_perplexity
from tinyld.pretrained import pretrained
from tinyld.reasoning import Arithmetic, Problem
from tinyld.runtime import TrainingDiverged, pick_device
from tinyld.train import TrainConfig, Trainer


def arithmetic_base(cfg: ForecastConfig, seed: int):
    """(world, tokenizer, model): the cached base model pretrained on :meth:`Arithmetic.pretrain_docs`."""
    world, tok, model = pretrained(seed, steps=cfg.pretrain_steps, task="arithmetic")
    return world, tok, model.to(pick_device(cfg.device).device).eval()


def grade_samples(world: Arithmetic, problems: list[Problem], answers: list[list[str]],
                  openings: list[str] | None = None) -> torch.Tensor:
    """Accuracy of each problem's sampled solutions (N,): the fraction graded correct. With ``openings``, each
    solution is that opening followed by the sample."""
    openings = openings or [""] * len(problems)
    return torch.tensor([statistics.fmean(world.grade(p, f"{o} {a}".strip()) for a in ans)
                         for p, ans, o in zip(problems, answers, openings)], dtype=torch.float64)


def accuracy(cfg: ForecastConfig, model, tok, world: Arithmetic, problems: list[Problem], seed: int,
             prompts: list[str] | None = None, openings: list[str] | None = None) -> torch.Tensor:
    """Per-problem accuracy of ``cfg.samples`` solutions sampled at ``cfg.temperature`` (N,)."""
    if prompts is None:
        prompts = [p.prompt() for p in problems]
    if openings:
        prompts = [f"{x} {o}" if o else x for x, o in zip(prompts, openings)]
    answers = sampled_answers(model, tok, prompts, cfg.samples, seed, cfg.temperature, MAX_NEW)
    return grade_samples(world, problems, answers, openings)


def checkpoint(cfg: ForecastConfig, model, tok, world: Arithmetic, measured: list[Problem], seed: int,
               test: list[Problem] | None = None) -> dict:
    """The measurements at one checkpoint: per measured training question the accuracy of its sampled solutions
    and the perplexity of its reference solution; with ``test``, the test accuracy."""
    examples = world.train_examples(measured)
    out = {"acc": accuracy(cfg, model, tok, world, measured, seed).tolist(),
           "ppl": solution_perplexity(model, tok, [e.prompt for e in examples],
                                      [e.chosen for e in examples]).tolist()}
    if test is not None:
        out["test_acc"] = accuracy(cfg, model, tok, world, test, seed + 1).mean().item()
    return out


def finetune(cfg: ForecastConfig, seed: int, model, tok, world: Arithmetic, train: list[Problem], lr: float,
             epochs: int, measured: list[Problem] | None = None, test: list[Problem] | None = None):
    """(model, points): a copy of ``model`` after ``epochs`` epochs of SFT on ``train`` (AdamW, cosine to 10% of
    ``lr``, no clipping), and :func:`checkpoint` on ``measured`` (and ``test``) at the end of every epoch."""
    model = copy.deepcopy(model)
    examples = world.train_examples(train)
    bs = min(cfg.batch_size, len(examples))
    per_epoch = math.ceil(len(examples) / bs)
    data = PairData(tok, examples, bs, model.config.block_size, seed)
    tc = TrainConfig(task="sft", steps=epochs * per_epoch, lr=lr, schedule="cosine", grad_clip=0.0, seed=seed,
                     log_every=max(1, epochs * per_epoch), progress=False)
    points: list[dict] = []

    def measure(trainer, step):
        if measured and step % per_epoch == 0:
            points.append({"epoch": step // per_epoch,
                           **checkpoint(cfg, model, tok, world, measured, seed * 1000 + step, test)})
            model.train()

    try:
        Trainer(model, data, tc, tok).run(measure)
    except TrainingDiverged as e:
        why = lower_lr(e, lr).replace("--lr", "the learning rate")  # the sweep's lr is one of --lrs
        raise TrainingDiverged(f"SFT (seed {seed}, lr {lr:g}) diverged: {why} ({e.fact})", e.fact, e.updates) \
            from None
    return model.eval(), points


def pm_table(points: list[dict], tau: float) -> torch.Tensor:
    """PM_t(i) for every checkpoint t and measured example i of one run: (T, N)."""
    acc = torch.tensor([p["acc"] for p in points], dtype=torch.float64)  # (T, N)
    mem = memorized(torch.tensor([p["ppl"] for p in points], dtype=torch.float64), tau)  # (T, N) bool
    return pre_memorization_accuracy(acc, mem)


def pm_curve(points: list[dict], tau: float) -> list[float]:
    """Dataset pre-memorization accuracy at every checkpoint of one run: the mean over examples of PM_t(i)."""
    return pm_table(points, tau).mean(1).tolist()


def ols(x: list[float], y: list[float]) -> dict:
    """Least squares y ≈ intercept + slope·x and its R² (0 when x or y does not vary)."""
    n = len(x)
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if n < 3 or sxx == 0 or syy == 0:
        return {"slope": 0.0, "intercept": my, "r2": 0.0, "n": n}
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx
    res = sum((b - my - slope * (a - mx)) ** 2 for a, b in zip(x, y))
    return {"slope": slope, "intercept": my - slope * mx, "r2": 1 - res / syy, "n": n}


def spread(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"mean": None, "sd": None}
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0}


# --------------------------------------------------------------------------------------------------------------
# sweep and perturbation: the dataset-level and the per-example claims
# --------------------------------------------------------------------------------------------------------------


def sweep_run(cfg: ForecastConfig, seed: int, n: int, epochs: int, lr: float, perturb: bool) -> dict:
    """One (data, epochs, lr) run of a seed with its checkpoints; with ``perturb``, the accuracy on perturbed
    training questions at its end."""
    world, tok, base = arithmetic_base(cfg, seed)
    train = world.pool()[:n]
    measured = train[: cfg.measured]
    t0 = time.perf_counter()
    model, points = finetune(cfg, seed, base, tok, world, train, lr, epochs, measured, world.test_problems())
    run = {"data": n, "epochs": epochs, "lr": lr, "points": points}
    if perturb:
        run["perturbed"] = perturbed_accuracy(cfg, model, tok, world, measured, seed)
    run["seconds"] = round(time.perf_counter() - t0, 1)
    return run


def sweep_seed(cfg: ForecastConfig, seed: int, perturb: bool, folder: RunFolder) -> dict:
    """Every (data, epochs, lr) run of one seed (:func:`sweep_run`), each one part of the run, and the base
    model's test accuracy."""
    runs = []
    for n in cfg.data:
        for epochs in cfg.epochs:
            for lr in cfg.lrs:
                run = folder.part(f"sweep/seed{seed}/data{n}_epochs{epochs}_lr{lr:g}",
                                  lambda: sweep_run(cfg, seed, n, epochs, lr, perturb))
                print(f"  seed {seed} · {n:>3} questions · {epochs:>2} epochs · lr {lr:g}: train acc "
                      f"{statistics.fmean(run['points'][-1]['acc']):.2f}, test acc {run['points'][-1]['test_acc']:.2f}"
                      f" ({run['seconds']} s)", flush=True)
                runs.append(run)

    def base_accuracy() -> dict:
        world, tok, base = arithmetic_base(cfg, seed)
        return {"base_test_acc": accuracy(cfg, base, tok, world, world.test_problems(), seed + 1).mean().item()}

    return {"seed": seed, **folder.part(f"sweep/seed{seed}/base", base_accuracy), "runs": runs}


def perturbed_accuracy(cfg: ForecastConfig, model, tok, world: Arithmetic, problems: list[Problem],
                       seed: int) -> dict:
    """Per problem, the sampled accuracy with the question reworded and with the solution opened by the first
    step of the other step order (:meth:`Arithmetic.perturbed`)."""
    per = [world.perturbed(p, world.form_of(p)) for p in problems]
    out = {}
    for kind in ("reworded", "opening"):
        prompts = [d[kind][0] for d in per]
        openings = [d[kind][1] for d in per]
        out[kind] = accuracy(cfg, model, tok, world, problems, seed + 7, prompts, openings).tolist()
    return out


def points_of(seed_result: dict, tau: float) -> dict:
    """The (run, checkpoint) points of one seed: PM train accuracy, plain train accuracy, test accuracy."""
    pm, train, test, label = [], [], [], []
    for r in seed_result["runs"]:
        pm += pm_curve(r["points"], tau)
        train += [statistics.fmean(p["acc"]) for p in r["points"]]
        test += [p["test_acc"] for p in r["points"]]
        label += [f"{r['data']} questions"] * len(r["points"])
    return {"pm": pm, "train": train, "test": test, "label": label}


def judge_sweep(cfg: ForecastConfig, seeds: list[dict]) -> dict:
    """R² of test accuracy on PM and on plain train accuracy per seed, R² against τ, and τ calibrated on the first
    seed then held fixed for the others."""
    per_seed = []
    for s in seeds:
        p = points_of(s, cfg.tau)
        per_seed.append({"seed": s["seed"], "pm": ols(p["pm"], p["test"]), "train": ols(p["train"], p["test"]),
                         "test_range": [min(p["test"]), max(p["test"])],
                         "train_range": [min(p["train"]), max(p["train"])]})
    def r2(s: dict, tau: float) -> float:
        p = points_of(s, tau)
        return ols(p["pm"], p["test"])["r2"]

    by_tau = {t: [r2(s, t) for s in seeds] for t in cfg.taus}
    calibrated = max(cfg.taus, key=lambda t: by_tau[t][0]) if cfg.taus else cfg.tau
    held_out = [r2(s, calibrated) for s in seeds[1:]]
    claims: list[dict] = []
    add_claim(claims, "R² of test acc on PM train acc ≥ 0.9", "R² ≥ 0.9 across models, data and configurations",
              [{"seed": m["seed"], "held": m["pm"]["r2"] >= 0.9, "r2": m["pm"]["r2"]} for m in per_seed],
              lambda m: f"{m['r2']:.2f}")
    add_claim(claims, "PM train acc fits test acc better than train acc",  # by > 0.01: a tie is not held
              "plain train accuracy predicts test accuracy poorly",
              [{"seed": m["seed"], "held": m["pm"]["r2"] > m["train"]["r2"] + 0.01, "r2": m["pm"]["r2"],
                "r2_train": m["train"]["r2"]} for m in per_seed],
              lambda m: f"{m['r2']:.2f} vs {m['r2_train']:.2f}")
    return {"tau": cfg.tau, "per_seed": per_seed,
            "r2_pm": spread([m["pm"]["r2"] for m in per_seed]),
            "r2_train": spread([m["train"]["r2"] for m in per_seed]),
            "r2_by_tau": {str(t): spread(v) for t, v in by_tau.items()},
            "calibrated": {"tau": calibrated, "on_seed": seeds[0]["seed"], "r2_other_seeds": spread(held_out)},
            "claims": claims}


def judge_perturb(cfg: ForecastConfig, seeds: list[dict]) -> dict:
    """Among training questions answered well at the end of a run (accuracy ≥ 0.6), the accuracy kept under each
    perturbation by those of high (≥ 0.5) and low (< 0.5) pre-memorization accuracy, pooled over a seed's runs."""
    per_seed = []
    for s in seeds:
        groups = {k: {"high": [], "low": []} for k in ("reworded", "opening")}
        for r in s["runs"]:
            pm = pm_table(r["points"], cfg.tau)[-1].tolist()  # PM per example at the run's end
            acc = r["points"][-1]["acc"]
            for kind, g in groups.items():
                for i, (a, p) in enumerate(zip(acc, pm)):
                    if a >= 0.6:
                        g["high" if p >= 0.5 else "low"].append(r["perturbed"][kind][i] - a)
        per_seed.append({"seed": s["seed"], **{
            kind: {grp: {"change": statistics.fmean(v) if v else None, "n": len(v)} for grp, v in g.items()}
            for kind, g in groups.items()}})
    claims: list[dict] = []
    for kind in ("reworded", "opening"):
        per = []
        for m in per_seed:
            hi, lo = m[kind]["high"]["change"], m[kind]["low"]["change"]
            per.append({"seed": m["seed"], "held": hi is not None and lo is not None and hi > lo,
                        "high": hi, "low": lo, "n_high": m[kind]["high"]["n"], "n_low": m[kind]["low"]["n"]})
        add_claim(claims, f"{kind}: high-PM examples keep more accuracy",
                  "high pre-memorization accuracy examples stay correct under perturbation; low ones do not", per,
                  lambda m: f"{dash(m['high'], '+.2f')} (n={m['n_high']}) vs {dash(m['low'], '+.2f')} (n={m['n_low']})")
    return {"per_seed": per_seed, "claims": claims}


# --------------------------------------------------------------------------------------------------------------
# curation: i.i.d. questions against questions like the low-PM ones
