"""Forecasting what finetuning will do (paper §5): pre-memorization train accuracy on a reasoning task (Kang et
al.) and CHES for preference pairs (Razin et al.).

``python -m tinyld forecast --experiment E`` with E one of

- ``sweep``: SFT of a base model pretrained on arithmetic text (:mod:`tinyld.reasoning`) under every combination
  of learning rate, epochs and number of training questions. At the end of every epoch, per training example:
  the accuracy of ``samples`` solutions sampled at temperature 0.8 (graded by the world) and the teacher-forced
  perplexity of its reference solution; and the test accuracy. Then one scatter of test accuracy against
  pre-memorization train accuracy over all (run, checkpoint) points, with the OLS line and R², beside the same fit
  for plain train accuracy, and R² for a range of τ.
- ``perturb``: at the end of every sweep run, the training questions reworded and their solutions opened with the
  other step order; accuracy on them, for examples of high and of low pre-memorization accuracy.
- ``curate``: new training questions added in rounds, i.i.d. from the pool or chosen like the training examples
  of low pre-memorization accuracy (nearest in the model's hidden-state embedding); test accuracy per added example.
- ``ches``: for the fact world's preference pairs (y⁺ against several kinds of y⁻), CHES (sum and
  length-normalised) and token edit distance, against whether DPO on that pair alone lowers log π(y⁺).
- ``all``: everything above.

Every result is over ≥ 3 seeds, with the optimizer and learning rate named and a claims table. The rules are
fixed before looking, as in :mod:`tinyld.experiments.sft_dynamics`.
"""
from __future__ import annotations

import copy
import json
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tinyld.data import Example, PairData
from tinyld.evaluate import response_logprobs, sampled_answers
from tinyld.experiments.common import (WORLD_SFT, BaseModelConfig, add_claim, check_shared, claims_table, plain_json,
                                       sft_stage, stage_config, stage_steps, world_base)
from tinyld.forecast import ches, memorized, pre_memorization_accuracy, solution_perplexity
from tinyld.preference import PreferenceData, Reference
from tinyld.pretrained import pretrained
from tinyld.reasoning import Arithmetic, Problem
from tinyld.runtime import (TinyldError, TrainingDiverged, check_choice, check_int, check_number, num_threads,
                            pick_device, versions, writable_dir, write_text_atomic)
from tinyld.train import TrainConfig, Trainer

EXPERIMENTS = ("sweep", "perturb", "curate", "ches", "all")
MAX_NEW = 26  # tokens sampled per solution: the longest written form is 18 tokens and EOS


def _numbers(name: str, xs, kind, lo: float = 0, hi: float = 10, empty: bool = False) -> list:
    """A list of distinct integers ≥ 1 (``kind`` int, at most ``hi``) or finite floats in (lo, hi]."""
    if not isinstance(xs, (list, tuple)) or (not xs and not empty):
        raise TinyldError(f"forecast {name} must be a non-empty list, got {xs!r}")
    out = [check_int(name, x, 1, int(hi)) if kind is int else float(check_number(name, x, lo, hi, strict=True))
           for x in xs]
    if len(set(out)) != len(out):
        raise TinyldError(f"forecast {name} repeats a value: {out}")
    return out


@dataclass
class ForecastConfig:
    experiment: str = "all"  # sweep | perturb | curate | ches | all
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])  # AdamW, cosine to 10%, no clipping
    epochs: list[int] = field(default_factory=lambda: [3, 10])
    data: list[int] = field(default_factory=lambda: [32, 256])  # training questions per run
    measured: int = 64  # PM and train accuracy are measured on (at most) this many of a run's training questions
    batch_size: int = 8
    samples: int = 5  # solutions sampled per question and checkpoint
    temperature: float = 0.8
    tau: float = -2.3  # memorized ⇔ perplexity < exp(e^τ): the published GSM8k value, held fixed
    taus: list[float] = field(default_factory=lambda: [-3.0, -2.6, -2.3, -2.0, -1.7, -1.4, -1.1])  # R² vs τ
    curate_start: int = 32  # curate: questions before the first round
    curate_add: int = 32  # questions added per round
    curate_rounds: int = 3
    curate_epochs: int = 10  # with curate_lr: the sweep's configuration that learned most
    curate_lr: float = 1e-2
    ches_lr: float = 1e-3  # ches: AdamW on one pair alone
    ches_steps: int = 5
    ches_beta: float = 0.1
    pretrain_steps: int = 1500  # the arithmetic base model
    ches_pretrain_steps: int = 3000  # the fact world's base model (ches)
    out: str = "tinyld_out/forecast"
    device: str = "cpu"
    threads: int = 2
    fast: bool = False  # a small sweep and short curation on 400-step base models: the numbers mean less

    def __post_init__(self):
        check_choice("forecast --experiment", self.experiment, EXPERIMENTS)
        check_shared(self, "forecast")
        self.lrs = _numbers("--lrs", self.lrs, float)
        self.epochs = _numbers("--epochs", self.epochs, int, hi=1000)
        self.data = _numbers("--data", self.data, int, hi=10_000)
        self.taus = _numbers("taus", self.taus, float, lo=-20, hi=5, empty=True)
        self.tau = float(check_number("--tau", self.tau, -20, 5))
        self.batch_size = check_int("forecast --batch-size", self.batch_size, 1)
        self.samples = check_int("forecast --samples", self.samples, 1, 64)
        self.temperature = float(check_number("forecast --temperature", self.temperature, 0.01, 100))
        for k in ("measured", "curate_start", "curate_add", "curate_rounds", "curate_epochs", "ches_steps",
                  "pretrain_steps", "ches_pretrain_steps"):
            setattr(self, k, check_int(f"forecast --{k.replace('_', '-')}", getattr(self, k), 1, 1_000_000))
        for k in ("curate_lr", "ches_lr", "ches_beta"):
            setattr(self, k, float(check_number(f"forecast --{k.replace('_', '-')}", getattr(self, k), 0, 10,
                                                strict=True)))
        if not isinstance(self.fast, bool):
            raise TinyldError(f"ForecastConfig.fast must be True or False, got {self.fast!r}")
        if self.fast:
            self.pretrain_steps = min(self.pretrain_steps, 400)
            self.ches_pretrain_steps = min(self.ches_pretrain_steps, 400)
            self.epochs = sorted({min(e, 4) for e in self.epochs[:2]})
            self.data = [min(d, 32) for d in self.data[:1]]
            self.lrs, self.measured = self.lrs[-2:], min(self.measured, 32)
            self.curate_start, self.curate_add = min(self.curate_start, 16), min(self.curate_add, 16)
            self.curate_rounds, self.curate_epochs = min(self.curate_rounds, 1), min(self.curate_epochs, 3)


# --------------------------------------------------------------------------------------------------------------
# the pieces: base model, one SFT run with a checkpoint every epoch, the measurements
# --------------------------------------------------------------------------------------------------------------


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
        raise TrainingDiverged(f"SFT (seed {seed}, lr {lr:g}) diverged: lower the learning rate ({e})") from None
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


def _spread(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"mean": None, "sd": None}
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0}


# --------------------------------------------------------------------------------------------------------------
# sweep and perturbation: the dataset-level and the per-example claims
# --------------------------------------------------------------------------------------------------------------


def sweep_seed(cfg: ForecastConfig, seed: int, perturb: bool) -> dict:
    """Every (data, epochs, lr) run of one seed, with its checkpoints; with ``perturb``, accuracy on perturbed
    training questions at the end of each run."""
    world, tok, base = arithmetic_base(cfg, seed)
    pool, test = world.pool(), world.test_problems()
    if max(cfg.data) > len(pool):
        raise TinyldError(f"forecast --data asks for {max(cfg.data)} training questions; the pool has {len(pool)}")
    runs = []
    for n in cfg.data:
        train = pool[:n]
        measured = train[: cfg.measured]
        for epochs in cfg.epochs:
            for lr in cfg.lrs:
                t0 = time.perf_counter()
                model, points = finetune(cfg, seed, base, tok, world, train, lr, epochs, measured, test)
                run = {"data": n, "epochs": epochs, "lr": lr, "points": points}
                if perturb:
                    run["perturbed"] = perturbed_accuracy(cfg, model, tok, world, measured, seed)
                run["seconds"] = round(time.perf_counter() - t0, 1)
                print(f"  seed {seed} · {n:>3} questions · {epochs:>2} epochs · lr {lr:g}: train acc "
                      f"{statistics.fmean(points[-1]['acc']):.2f}, test acc {points[-1]['test_acc']:.2f} "
                      f"({run['seconds']} s)", flush=True)
                runs.append(run)
    return {"seed": seed, "base_test_acc": accuracy(cfg, base, tok, world, test, seed + 1).mean().item(),
            "runs": runs}


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
              [{"seed": m["seed"], "held": m["pm"]["r2"] >= 0.9, "r2": m["pm"]["r2"]} for m in per_seed])
    add_claim(claims, "PM train acc fits test acc better than train acc",  # by > 0.01: a tie is not held
              "plain train accuracy predicts test accuracy poorly",
              [{"seed": m["seed"], "held": m["pm"]["r2"] > m["train"]["r2"] + 0.01, "r2": m["pm"]["r2"],
                "r2_train": m["train"]["r2"]} for m in per_seed])
    return {"tau": cfg.tau, "per_seed": per_seed,
            "r2_pm": _spread([m["pm"]["r2"] for m in per_seed]),
            "r2_train": _spread([m["train"]["r2"] for m in per_seed]),
            "r2_by_tau": {str(t): _spread(v) for t, v in by_tau.items()},
            "calibrated": {"tau": calibrated, "on_seed": seeds[0]["seed"], "r2_other_seeds": _spread(held_out)},
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
                  "high pre-memorization accuracy examples stay correct under perturbation; low ones do not", per)
    return {"per_seed": per_seed, "claims": claims}


# --------------------------------------------------------------------------------------------------------------
# curation: i.i.d. questions against questions like the low-PM ones
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def embed(model, tok, problems: list[Problem]) -> torch.Tensor:
    """Each question's embedding: the mean of the model's last hidden states over its prompt, unit length (N, C)."""
    ids = [tok.encode(p.prompt()) for p in problems]
    width = max(map(len, ids))
    idx = torch.tensor([x + [tok.pad_id] * (width - len(x)) for x in ids], device=next(model.parameters()).device)
    h = model.eval().hidden(idx)  # (N, T, C): causal, so the padding after a prompt does not change its states
    keep = torch.tensor([[1.0] * len(x) + [0.0] * (width - len(x)) for x in ids], device=h.device)[..., None]
    e = (h * keep).sum(1) / keep.sum(1)
    return torch.nn.functional.normalize(e.double(), dim=-1).cpu()


def like_low_pm(model, tok, data: list[Problem], pm: list[float], candidates: list[Problem], k: int) -> list[int]:
    """Indices of the ``k`` candidates nearest (cosine, in :func:`embed`) to any training question of low
    pre-memorization accuracy (< 0.5; the lowest quarter if none is that low)."""
    order = sorted(range(len(data)), key=lambda i: pm[i])
    low = [i for i in order if pm[i] < 0.5] or order[: max(1, len(order) // 4)]
    sim = embed(model, tok, candidates) @ embed(model, tok, [data[i] for i in low]).T  # (M, L)
    return sim.max(1).values.argsort(descending=True)[:k].tolist()


def curate_seed(cfg: ForecastConfig, seed: int) -> dict:
    world, tok, base = arithmetic_base(cfg, seed)
    pool, test = world.pool(), world.test_problems()
    need = cfg.curate_start + cfg.curate_rounds * cfg.curate_add
    if need > len(pool):
        raise TinyldError(f"forecast curation needs {need} questions; the pool has {len(pool)}")
    start = pool[: cfg.curate_start]
    arms = {"iid": {"data": list(start), "rest": pool[cfg.curate_start:], "test_acc": [], "size": []},
            "curated": {"data": list(start), "rest": pool[cfg.curate_start:], "test_acc": [], "size": []}}
    rng = random.Random(f"curate/{seed}")
    for rnd in range(cfg.curate_rounds + 1):
        for name, arm in arms.items():
            if rnd == 0 and name == "curated":  # both arms start from the same questions: one run serves both
                arm.update(test_acc=list(arms["iid"]["test_acc"]), size=list(arms["iid"]["size"]),
                           model=arms["iid"]["model"], pm=arms["iid"]["pm"])
                continue
            measure = arm["data"] if name == "curated" or rnd == 0 else None  # PM only where it is used
            model, points = finetune(cfg, seed, base, tok, world, arm["data"], cfg.curate_lr, cfg.curate_epochs,
                                     measure)
            arm["test_acc"].append(accuracy(cfg, model, tok, world, test, seed + 1).mean().item())
            arm["size"].append(len(arm["data"]))
            arm["model"], arm["pm"] = model, (pm_table(points, cfg.tau)[-1].tolist() if points else None)
        print(f"  seed {seed} · round {rnd}: test acc i.i.d. {arms['iid']['test_acc'][-1]:.2f}, curated "
              f"{arms['curated']['test_acc'][-1]:.2f} ({len(arms['iid']['data'])} questions)", flush=True)
        if rnd == cfg.curate_rounds:
            break
        for name, arm in arms.items():
            if name == "iid":
                pick = rng.sample(range(len(arm["rest"])), cfg.curate_add)
            else:
                pick = like_low_pm(arm["model"], tok, arm["data"], arm["pm"], arm["rest"], cfg.curate_add)
            chosen = set(pick)
            arm["data"] = arm["data"] + [arm["rest"][i] for i in pick]
            arm["rest"] = [p for i, p in enumerate(arm["rest"]) if i not in chosen]
    out = {"seed": seed}
    for name, arm in arms.items():
        added = arm["size"][-1] - arm["size"][0]
        out[name] = {"size": arm["size"], "test_acc": arm["test_acc"],
                     "distinct_triples": len({(p.a, p.b, p.c) for p in arm["data"]}),
                     "gain_per_question": (arm["test_acc"][-1] - arm["test_acc"][0]) / added}
    gi, gc = out["iid"]["gain_per_question"], out["curated"]["gain_per_question"]
    out["efficiency_ratio"] = gc / gi if gi > 0 else None
    return out


def judge_curate(seeds: list[dict]) -> dict:
    claims: list[dict] = []
    add_claim(claims, "curated data ≥ 1.5× as data-efficient", "1.5–2× the data efficiency of i.i.d. data",
              [{"seed": s["seed"], "held": s["efficiency_ratio"] is not None and s["efficiency_ratio"] >= 1.5,
                "ratio": s["efficiency_ratio"], "gain_iid": s["iid"]["gain_per_question"],
                "gain_curated": s["curated"]["gain_per_question"]} for s in seeds])
    return {"efficiency_ratio": _spread([s["efficiency_ratio"] for s in seeds]),
            "gain_iid": _spread([s["iid"]["gain_per_question"] for s in seeds]),
            "gain_curated": _spread([s["curated"]["gain_per_question"] for s in seeds]), "claims": claims}


# --------------------------------------------------------------------------------------------------------------
# CHES: which preference pairs make DPO lower log π(y⁺)
# --------------------------------------------------------------------------------------------------------------

CHES_KINDS = ("rejected", "gpts_rejected", "gptf_chosen", "other_chosen", "hum", "random_tokens")  # the y⁻ used


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance between two token sequences (insertions, deletions, substitutions)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def auc(score: list[float], positive: list[bool]) -> float | None:
    """P(score of a positive > score of a negative), ties counting ½ (None when one class is empty)."""
    pos = [s for s, p in zip(score, positive) if p]
    neg = [s for s, p in zip(score, positive) if not p]
    if not pos or not neg:
        return None
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def dpo_change(cfg: ForecastConfig, model, tok, pairs: list[Example], seed: int,
               optimizer: str = "adamw") -> list[float]:
    """For each pair alone: the change of log π(y⁺|x) after ``cfg.ches_steps`` DPO steps (sigmoid loss, β
    ``cfg.ches_beta``, lr ``cfg.ches_lr``, no clipping) from ``model``, which is also the reference."""
    before = response_logprobs(model, tok, [e.prompt for e in pairs], [e.chosen for e in pairs]).tolist()
    tc = TrainConfig(task="dpo", steps=cfg.ches_steps, optimizer=optimizer, lr=cfg.ches_lr, grad_clip=0.0, seed=seed,
                     progress=False,
                     log_every=cfg.ches_steps, pair_loss={"name": "sigmoid", "beta": cfg.ches_beta})
    change = []
    for ex, b in zip(pairs, before):
        m = copy.deepcopy(model)
        Trainer(m, PreferenceData(tok, [ex], 1, m.config.block_size, seed, Reference.compute(model, tok, [ex])),
                tc, tok).run()
        change.append(response_logprobs(m, tok, [ex.prompt], [ex.chosen]).item() - b)
    return change


def ches_model(cfg: ForecastConfig, seed: int):
    """(model, tokenizer, world): the fact world's (easy mode) pretrained model of ``cfg.ches_pretrain_steps`` steps
    after the SFT stage that dpo-dynamics starts DPO from, with its default settings (:data:`WORLD_SFT`)."""
    base = BaseModelConfig(pretrain_steps=cfg.ches_pretrain_steps, device=cfg.device)  # preset tiny
    model, tok, world = world_base(base, seed, "easy")
    items = world.train_items()
    epochs = min(WORLD_SFT.epochs, WORLD_SFT.fast_epochs) if cfg.fast else WORLD_SFT.epochs
    steps = stage_steps(epochs, len(items), WORLD_SFT.batch_size)
    tc = stage_config("sft", steps, seed, WORLD_SFT.optimizer, WORLD_SFT.lr)
    return sft_stage(model, tok, [it.example() for it in items], tc, WORLD_SFT.batch_size), tok, world


def ches_seed(cfg: ForecastConfig, seed: int) -> dict:
    """CHES, edit distance and the change of log π(y⁺) under a few DPO steps on each pair alone, for every
    training prompt of the fact world (easy mode, after SFT: :func:`ches_model`) paired with each kind of y⁻ in
    :data:`CHES_KINDS`."""
    model, tok, world = ches_model(cfg, seed)
    items = world.train_items()
    pairs = [(kind, Example(it.prompt, it.chosen, world.probes(it)[kind])) for it in items for kind in CHES_KINDS]
    prompts, chosen, rejected = ([e.prompt for _, e in pairs], [e.chosen for _, e in pairs],
                                 [e.rejected for _, e in pairs])
    score_sum = ches(model, tok, prompts, chosen, rejected).tolist()
    score_norm = ches(model, tok, prompts, chosen, rejected, normalize=True).tolist()
    dist = [edit_distance(tok.encode(c), tok.encode(r)) for c, r in zip(chosen, rejected)]
    change = dpo_change(cfg, model, tok, [e for _, e in pairs], seed)
    falls = [c < 0 for c in change]
    res = {"seed": seed, "pairs": [{"kind": k, "ches": s1, "ches_norm": s2, "edit": d, "change": c}
                                   for (k, _), s1, s2, d, c in zip(pairs, score_sum, score_norm, dist, change)],
           "fall_rate": statistics.fmean(falls),
           "auc": {"ches": auc(score_sum, falls), "ches_norm": auc(score_norm, falls),
                   "edit": auc([-d for d in dist], falls)}}
    q = sorted(range(len(pairs)), key=lambda i: score_sum[i])
    quarter = max(1, len(q) // 4)
    res["fall_rate_top_quarter"] = statistics.fmean(falls[i] for i in q[-quarter:])
    res["fall_rate_bottom_quarter"] = statistics.fmean(falls[i] for i in q[:quarter])
    res["by_kind"] = {k: {"ches": statistics.fmean(p["ches"] for p in res["pairs"] if p["kind"] == k),
                          "change": statistics.fmean(p["change"] for p in res["pairs"] if p["kind"] == k),
                          "fall_rate": statistics.fmean(p["change"] < 0 for p in res["pairs"] if p["kind"] == k)}
                      for k in CHES_KINDS}
    print(f"  seed {seed}: log π(y⁺) falls for {res['fall_rate']:.2f} of pairs; AUC ches {res['auc']['ches']}, "
          f"ches_norm {res['auc']['ches_norm']}, −edit distance {res['auc']['edit']}", flush=True)
    return res


def judge_ches(seeds: list[dict]) -> dict:
    claims: list[dict] = []
    for form in ("ches", "ches_norm"):
        add_claim(claims, f"{form} ranks falling pairs above edit distance", "CHES identifies the pairs that make "
                  "DPO lower the chosen response's likelihood; edit distance does not",
                  [{"seed": s["seed"], "held": None not in (s["auc"][form], s["auc"]["edit"])
                    and s["auc"][form] > s["auc"]["edit"], "auc": s["auc"][form], "auc_edit": s["auc"]["edit"]}
                   for s in seeds])
    add_claim(claims, "top-CHES quarter falls more than bottom", "high-CHES pairs lower log π(y⁺)",
              [{"seed": s["seed"], "held": s["fall_rate_top_quarter"] > s["fall_rate_bottom_quarter"],
                "top": s["fall_rate_top_quarter"], "bottom": s["fall_rate_bottom_quarter"]} for s in seeds])
    return {"auc": {k: _spread([s["auc"][k] for s in seeds]) for k in ("ches", "ches_norm", "edit")},
            "fall_rate": _spread([s["fall_rate"] for s in seeds]), "claims": claims}


# --------------------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------------------


def _opt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _fmt(m: dict) -> str:
    if "r2_train" in m:
        return f"{m['r2']:.2f} vs {m['r2_train']:.2f}"
    if "r2" in m:
        return f"{m['r2']:.2f}"
    if "n_high" in m:
        return f"{_opt(m['high'], '+.2f')} (n={m['n_high']}) vs {_opt(m['low'], '+.2f')} (n={m['n_low']})"
    if "ratio" in m:
        return "—" if m["ratio"] is None else f"{m['ratio']:.2f}×"
    if "auc_edit" in m:
        return f"{_opt(m['auc'], '.2f')} vs {_opt(m['auc_edit'], '.2f')}"
    return f"{m['top']:.2f} vs {m['bottom']:.2f}"


def figures(cfg: ForecastConfig, result: dict, out: Path) -> dict:
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
             "train accuracy": (x_tr, y, ols(x_tr, y))}, out / "pm_scatter.png",
            f"test accuracy, every (run, checkpoint), {len(seeds)} seeds pooled", "test accuracy", labels))
        taus = [float(t) for t in result["sweep"]["judged"]["r2_by_tau"]]
        figs["r2_by_tau"] = str(lines(taus, {"R² (PM), mean over seeds": [
            result["sweep"]["judged"]["r2_by_tau"][str(t)]["mean"] for t in taus]}, out / "r2_by_tau.png",
            "R² of test accuracy on PM train accuracy against τ", xlabel="τ (memorized: perplexity < exp(e^τ))",
            ylabel="R²"))
    if "curate" in result:
        s0 = result["curate"]["seeds"]
        figs["curate"] = str(lines(s0[0]["iid"]["size"], {
            "like low-PM (mean over seeds)": [statistics.fmean(s["curated"]["test_acc"][i] for s in s0)
                                              for i in range(len(s0[0]["iid"]["size"]))],
            "i.i.d. (mean over seeds)": [statistics.fmean(s["iid"]["test_acc"][i] for s in s0)
                                         for i in range(len(s0[0]["iid"]["size"]))]},
            out / "curation.png", "test accuracy as questions are added", xlabel="training questions",
            ylabel="test accuracy"))
    if "ches" in result:
        ps = [p for s in result["ches"]["seeds"] for p in s["pairs"]]
        ch = [p["change"] for p in ps]
        panels = {}
        for key, label in (("ches", "CHES (sum)"), ("ches_norm", "CHES (length-normalised)"),
                           ("edit", "token edit distance")):
            x = [p[key] for p in ps]
            panels[label] = (x, ch, ols(x, ch))
        figs["ches"] = str(fit_panels(panels, out / "ches.png", f"change of log π(y⁺) after {cfg.ches_steps} DPO "
                                      "steps on one pair", "Δ log π(y⁺) (nats)", [p["kind"] for p in ps]))
    return figs


def run(cfg: ForecastConfig) -> dict:
    if not isinstance(cfg, ForecastConfig):
        raise TinyldError(f"run takes a ForecastConfig, got {type(cfg).__name__}")
    out = writable_dir(cfg.out, "forecast output folder")
    check_inputs(cfg)
    with num_threads(cfg.threads):
        return _run(cfg, out)


def check_inputs(cfg: ForecastConfig) -> None:
    """What can be refused before any work: the device, the model cache folder, and data sizes against every
    seed's question pool."""
    pick_device(cfg.device)
    writable_dir("tinyld_out/cache", "model cache folder (./tinyld_out/cache)")
    want = set(EXPERIMENTS[:-1]) if cfg.experiment == "all" else {cfg.experiment}
    pool = min(len(Arithmetic(s).pool()) for s in cfg.seeds)
    if want & {"sweep", "perturb"} and max(cfg.data) > pool:
        raise TinyldError(f"forecast --data asks for {max(cfg.data)} training questions; the pool has {pool}")
    need = cfg.curate_start + cfg.curate_rounds * cfg.curate_add
    if "curate" in want and need > pool:
        raise TinyldError(f"forecast curation needs {need} questions ({cfg.curate_start} + {cfg.curate_rounds} × "
                          f"{cfg.curate_add}); the pool has {pool}")


def _run(cfg: ForecastConfig, out: Path) -> dict:
    t0 = time.perf_counter()
    want = set(EXPERIMENTS[:-1]) if cfg.experiment == "all" else {cfg.experiment}
    result: dict = {"config": asdict(cfg), "versions": versions()}
    texts = []
    if want & {"sweep", "perturb"}:
        print(f"== sweep: SFT (AdamW, cosine, no clipping), lr {cfg.lrs}, epochs {cfg.epochs}, questions {cfg.data}, "
              f"seeds {cfg.seeds}; {cfg.samples} samples at T={cfg.temperature:g} per question and epoch ==")
        seeds = [sweep_seed(cfg, s, "perturb" in want) for s in cfg.seeds]
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
        texts.append(claims_table(j["claims"], "dataset level (R² per seed: PM vs train acc)", _fmt, 52, ""))
        print(texts[-1])
        if "perturb" in want:
            result["perturb"] = judge_perturb(cfg, seeds)
            texts.append(claims_table(result["perturb"]["claims"], "per example (accuracy change: high-PM vs "
                                      "low-PM)", _fmt, 52, ""))
            print(texts[-1])
    if "curate" in want:
        print(f"== curation: {cfg.curate_start} questions + {cfg.curate_rounds} rounds of {cfg.curate_add}, SFT "
              f"AdamW lr {cfg.curate_lr:g} for {cfg.curate_epochs} epochs ==")
        seeds = [curate_seed(cfg, s) for s in cfg.seeds]
        result["curate"] = {"seeds": seeds, **judge_curate(seeds)}
        texts.append(claims_table(result["curate"]["claims"], "data curation (efficiency ratio)", _fmt, 52, ""))
        print(texts[-1])
    if "ches" in want:
        print(f"== CHES: DPO (sigmoid, β {cfg.ches_beta:g}), AdamW lr {cfg.ches_lr:g}, {cfg.ches_steps} steps on each "
              "pair alone, from the SFT model of the fact world ==")
        seeds = [ches_seed(cfg, s) for s in cfg.seeds]
        result["ches"] = {"seeds": seeds, **judge_ches(seeds)}
        texts.append(claims_table(result["ches"]["claims"], "CHES (AUC for 'log π(y⁺) falls': score vs edit "
                                  "distance)", _fmt, 52, ""))
        print(texts[-1])
    try:
        result["figures"] = figures(cfg, result, out)
    except ImportError as e:
        print(f"  (no figures: {e})")
    result["runtime_s"] = round(time.perf_counter() - t0, 1)
    write_text_atomic(out / "forecast.json", json.dumps(plain_json(result), indent=1, allow_nan=False))
    write_text_atomic(out / "claims.txt", "\n\n".join(texts) + "\n")
    print(f"\nwrote {out / 'forecast.json'}, {out / 'claims.txt'} and figures in {out} · {result['runtime_s']} s")
    return result
