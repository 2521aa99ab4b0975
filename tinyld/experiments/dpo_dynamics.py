"""What off-policy DPO does to every answer (paper §3–§4, Fig. 4), the extend fix, on- vs off-policy DPO, the
repeater effect, and the conditions under which squeezing appears.

``python -m tinyld dpo-dynamics --experiment E`` with E one of

- ``dynamics``: SFT on y⁺, then off-policy DPO on the world's (x, y⁺, y⁻) pairs with the SFT model as reference.
  The probe tracker follows every family; :func:`tinyld.squeeze.token_mass` follows where the probability goes at
  the positions of y⁺ and y⁻; greedy answers after every DPO epoch give the repetition measure (the repeater).
- ``extend``: the baseline spends its SFT steps on y⁺ alone; extend spends the same number on y⁺ and y⁻ (each
  prompt twice). Then DPO from each, with that model as reference. Reported: log π(y⁻) during SFT, squeezing during
  DPO, and a win rate judged by the world's oracle on sampled answers to held-out prompts.
- ``on-policy``: the same SFT model, DPO whose pairs are sampled from the current policy every epoch and ranked by
  the world's oracle (which knows every fact), against off-policy DPO.
- ``conditions``: the dynamics claims under a shallower valley (fewer pretraining steps), plain SGD, another β and
  other learning rates.
- ``all``: everything above.

Every result is over ≥ 3 seeds in both world modes (hard: the paper's regime; easy), with the regime (valley
depth, log π(y⁺), …) beside it, the optimizer and learning rate named, and a claims table. The rules are fixed
before looking, as in :mod:`tinyld.experiments.sft_dynamics`.
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from tinyld.data import Example
from tinyld.distributed import dist_info, from_rank0, is_main
from tinyld.evaluate import greedy_answers, sampled_answers, valley_depth
from tinyld.experiments.common import (WORLD_SFT, add_claim, check_base_model, check_shared, figure, plain_json,
                                       regime, sft_stage, stage_config, stage_steps, summary, world_base)
from tinyld.experiments.common import claims_table as shared_claims_table
from tinyld.losses import pair_loss
from tinyld.preference import PreferenceData, Reference
from tinyld.probes import ProbeSet, Tracker
from tinyld.runtime import (TinyldError, TrainingDiverged, check_choice, check_int, check_number, num_threads,
                            pick_device, versions, writable_dir, write_text_atomic)
from tinyld.squeeze import MASS_CLASSES, token_mass
from tinyld.train import OPTIMIZERS, TrainConfig, Trainer
from tinyld.world import MODES, World

EXPERIMENTS = ("dynamics", "extend", "on-policy", "conditions", "all")
FALLERS = ("chosen", "rejected", "gpts_chosen", "gpts_rejected", "gptf_chosen", "gptf_rejected", "init",
           "other_chosen", "test_chosen", "hum", "urnd_chosen", "rnd", "random_tokens")  # "almost everything falls"


@dataclass
class DPODynamicsConfig:
    experiment: str = "all"  # dynamics | extend | on-policy | conditions | all
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    modes: list[str] = field(default_factory=lambda: ["hard", "easy"])
    sft_epochs: int = WORLD_SFT.epochs  # SFT on y⁺ before DPO (extend: the same number of steps on y⁺ and y⁻)
    dpo_epochs: int = 8
    optimizer: str = WORLD_SFT.optimizer  # both stages: sgd | adamw | rmsprop
    lr: float = WORLD_SFT.lr  # both stages, constant, no clipping
    loss: str = "sigmoid"  # any name of tinyld.losses.PAIR_LOSSES
    beta: float = 0.1
    batch_size: int = WORLD_SFT.batch_size  # pairs per step (40 training prompts: 5 steps per epoch)
    samples: int = 4  # on-policy: answers sampled per prompt · win rate: answers per held-out prompt
    pretrain_steps: int | None = None  # of the base model (cached): 3000 tiny, 1000 gpt2
    preset: str | None = None  # the base model: tiny (default; the world's words) or gpt2 (GPT-2 small, BPE)
    hf: str | None = None  # a local Hugging Face GPT-2 folder to start the gpt2 pretraining from (GPT.from_hf)
    out: str = "tinyld_out/dpo_dynamics"
    device: str | None = None  # None: cpu for tiny, auto for gpt2
    threads: int = 2
    fast: bool = False  # 400-step base models, 2 SFT and 4 DPO epochs: for lessons, the numbers mean less

    def __post_init__(self):
        check_choice("dpo-dynamics --experiment", self.experiment, EXPERIMENTS)
        check_base_model(self, "dpo-dynamics")
        check_shared(self, "dpo-dynamics")
        if isinstance(self.modes, str) or not isinstance(self.modes, (list, tuple)) or not self.modes:
            raise TinyldError(f"dpo-dynamics --modes must be a non-empty list of {' / '.join(MODES)}")
        self.modes = [check_choice("dpo-dynamics --modes", m, MODES) for m in self.modes]
        if len(set(self.modes)) != len(self.modes):
            raise TinyldError(f"dpo-dynamics --modes repeats a mode: {self.modes}")
        self.sft_epochs = check_int("dpo-dynamics --sft-epochs", self.sft_epochs, 0, 1000)
        self.dpo_epochs = check_int("dpo-dynamics --dpo-epochs", self.dpo_epochs, 1, 1000)
        check_choice("dpo-dynamics --optimizer", self.optimizer, OPTIMIZERS)
        self.lr = check_number("dpo-dynamics --lr", self.lr, 0, strict=True)
        if not isinstance(self.loss, str):
            raise TinyldError(f"dpo-dynamics --loss must be a loss name, got {type(self.loss).__name__}")
        self.beta = float(check_number("dpo-dynamics --beta", self.beta, 0, strict=True))
        self.lr = float(self.lr)
        pair_loss(self.loss, beta=self.beta)
        self.batch_size = check_int("dpo-dynamics --batch-size", self.batch_size, 1)
        self.samples = check_int("dpo-dynamics --samples", self.samples, 1, 64)
        if not isinstance(self.fast, bool):
            raise TinyldError(f"DPODynamicsConfig.fast must be True or False, got {self.fast!r}")
        if self.fast:
            self.pretrain_steps = min(self.pretrain_steps, 400)
            self.sft_epochs, self.dpo_epochs = min(self.sft_epochs, WORLD_SFT.fast_epochs), min(self.dpo_epochs, 4)

    def train_config(self, task: str, steps: int, seed: int, optimizer: str | None = None, lr: float | None = None,
                     beta: float | None = None) -> TrainConfig:
        """The TrainConfig of one stage (:func:`~tinyld.experiments.common.stage_config`); None: this config's."""
        return stage_config(task, steps, seed, optimizer or self.optimizer, lr or self.lr,
                            pair_loss={"name": self.loss, "beta": beta or self.beta})


# --------------------------------------------------------------------------------------------------------------
# the pieces: base model, SFT stage, measurements, DPO stage
# --------------------------------------------------------------------------------------------------------------


def base(cfg: DPODynamicsConfig, seed: int, mode: str, pretrain_steps: int | None = None):
    """(model, tokenizer, world) for one seed and world mode: the cached pretrained world model."""
    return world_base(cfg, seed, mode, pretrain_steps)


def sft(cfg: DPODynamicsConfig, seed: int, model, tok, examples: list[Example], steps: int, tracker=None,
        optimizer: str | None = None, lr: float | None = None):
    """A copy of ``model`` after ``steps`` SFT steps on ``examples`` (prompt masked, summed log-prob)."""
    return sft_stage(model, tok, examples, cfg.train_config("sft", steps, seed, optimizer, lr), cfg.batch_size,
                     tracker)


def sft_steps(cfg: DPODynamicsConfig, n_prompts: int) -> int:
    """Steps of the baseline SFT stage (y⁺ only, ``sft_epochs`` epochs); extend spends the same on y⁺ and y⁻."""
    return stage_steps(cfg.sft_epochs, n_prompts, cfg.batch_size)


@torch.no_grad()
def mass(model, tok, examples: list[Example], start_peak: torch.Tensor | None = None) -> dict:
    """Mean over response positions of :func:`token_mass`, at the positions of y⁺ (``chosen``) and of y⁻
    (``rejected``): {"chosen": {own, other, argmax, rest}, "rejected": {…}}. ``argmax`` is the token that is the
    peak *now*. With ``start_peak`` (from :func:`peaks` at the start of training) each half also gets
    ``start_argmax``: the mass of the token that was the peak then (0 where it is the own or the other token)."""
    b, t, other = _mass_batch(model, tok, examples)
    logits = model.eval()(b.seqs.idx)
    m = token_mass(logits, t, other)  # (2B, T, 4)
    fixed = None if start_peak is None else token_mass(logits, t, other, peak=start_peak)[..., 2]  # (2B, T)
    B, out = b.n_pairs, {}
    for half, rows in (("chosen", slice(0, B)), ("rejected", slice(B, 2 * B))):
        n = (t[rows] != -100).sum().item()
        out[half] = {k: (m[rows, :, i].sum() / n).item() for i, k in enumerate(MASS_CLASSES)}
        if fixed is not None:
            out[half]["start_argmax"] = (fixed[rows].sum() / n).item()
    return out


@torch.no_grad()
def peaks(model, tok, examples: list[Example]) -> torch.Tensor:
    """The argmax token at every position of the pairs' sequences (2B, T), for :func:`mass`'s ``start_peak``."""
    b, _, _ = _mass_batch(model, tok, examples)
    return model.eval()(b.seqs.idx).argmax(-1)


def _mass_batch(model, tok, examples):
    data = PreferenceData(tok, examples, len(examples), model.config.block_size)
    b = data.batch(0).to(next(model.parameters()).device)
    B = b.n_pairs
    t = b.seqs.targets  # (2B, T): chosen rows then rejected rows, prompts aligned
    return b, t, torch.cat([t[B:], t[:B]])  # each row's paired response, position by position


def repetition(answers: list[str]) -> float:
    """The repeater measure: the fraction of an answer's word trigrams that already appeared earlier in the same
    answer, averaged over answers (an answer of fewer than four words counts as 0). A fluent two-sentence answer
    scores near 0; "the old river the old river the old river" scores 4/7."""
    rates = []
    for a in answers:
        w = a.split()
        grams = list(zip(w, w[1:], w[2:]))
        rates.append(0.0 if len(grams) < 2 else sum(g in grams[:i] for i, g in enumerate(grams)) / len(grams))
    return statistics.fmean(rates) if rates else 0.0


def sample_answers(model, tok, items, samples: int, seed: int) -> list[list[str]]:
    """``samples`` answers per item, sampled at temperature 1 (:func:`tinyld.evaluate.sampled_answers`)."""
    max_new = max(len(tok.encode(it.chosen)) for it in items) + 4
    return sampled_answers(model, tok, [it.prompt for it in items], samples, seed, 1.0, max_new)


def sampled_correct(model, tok, world: World, items, samples: int, seed: int) -> list[list[bool]]:
    """``samples`` answers per item (:func:`sample_answers`), each judged by the world's oracle."""
    return [[world.classify(it, a) == "correct" for a in answers]
            for it, answers in zip(items, sample_answers(model, tok, items, samples, seed))]


def on_policy_pairs(model, tok, world: World, items, samples: int, seed: int) -> list[Example]:
    """Pairs sampled from the policy and ranked by the oracle: y⁻ is a sampled answer that is not correct; y⁺ a
    sampled correct one, or the world's y⁺ when no sample is correct. A prompt whose samples are all correct gives
    no pair this round."""
    out = []
    for it, answers in zip(items, sample_answers(model, tok, items, samples, seed)):
        good = [a for a in answers if a and world.classify(it, a) == "correct"]
        bad = [a for a in answers if a and world.classify(it, a) != "correct"]
        if bad:
            chosen = good[0] if good else it.chosen
            if chosen.split() != bad[0].split():
                out.append(Example(it.prompt, chosen, bad[0], {"on_policy_chosen": bool(good)}))
    return out


class DPOWatch:
    """What a DPO run measures, on rank 0: the probe tracker after every epoch (``dense``: also after every step of
    the first), the mass split at y⁺/y⁻ positions and the repetition of greedy answers after every epoch (on-policy:
    both at the end of every round), and a copy of the model after each DPO epoch in ``snapshots`` (off-policy).
    Called as the Trainer's callback."""

    def __init__(self, tok, probes: ProbeSet, examples: list[Example], spe: int, on_policy: bool, dense: bool,
                 snapshots: tuple[int, ...]):
        self.tok, self.probes, self.examples, self.spe = tok, probes, examples, spe
        self.on_policy, self.dense, self.snapshots = on_policy, dense, snapshots
        self.tracker = Tracker(tok, probes, every=spe, valley=True)
        self.measured = {"mass": [], "repetition": [], "mass_steps": []}
        self.models = {}
        self.prompts = [p.prompt for p in probes.probes]
        self.max_new = 2 * max(len(tok.encode(p.responses["chosen"])) for p in probes.probes)
        self.start_peak = None

    def start(self, model) -> None:
        """The measurements before DPO (step 0)."""
        self.start_peak = peaks(model, self.tok, self.examples)  # the argmax at every position before DPO
        self.tracker.measure(model, 0)
        self.measure(model, 0, end=True)

    def __call__(self, trainer, step: int) -> None:
        end = step == trainer.cfg.steps  # on-policy: the end of a round
        self.track(trainer.model, step, end)
        self.measure(trainer.model, step, end)

    def measure(self, m, step: int, end: bool = False) -> None:
        """Keep a snapshot, measure the mass split and the repetition, each where it is due."""
        spe = self.spe
        if not self.on_policy and step % spe == 0 and step // spe in self.snapshots:
            self.models[step // spe] = copy.deepcopy(m).eval()
        if (end if self.on_policy else step % spe == 0):
            self.measured["mass"].append(mass(m, self.tok, self.examples, self.start_peak))
            self.measured["mass_steps"].append(step)
            self.measured["repetition"].append(repetition(greedy_answers(m, self.tok, self.prompts, self.max_new)))

    def track(self, m, step: int, end: bool = False) -> None:
        """Measure every probe family where it is due (on-policy: at the end of every round)."""
        if (end if self.on_policy else step % self.spe == 0 or (self.dense and step < self.spe)):
            self.tracker.measure(m, step)

    def result(self) -> dict:
        """The curves of every family per split, and the mass, repetition and valley depth measured."""
        tr, measured = self.tracker, self.measured
        return {"curves": {split: {f: tr.curve(f, split)[1] for f in self.probes.families}
                           for split in ("train", "test")},
                "measured_steps": tr.curve("chosen", "train")[0],
                "valley_depth": [r["valley_depth"] for r in tr.steps],
                "mass": measured["mass"], "mass_epochs": [s / self.spe for s in measured["mass_steps"]],
                "repetition": measured["repetition"]}


def on_policy_round(cfg: DPODynamicsConfig, model, tok, world: World, items, seed: int) -> tuple[list[Example], int]:
    """One on-policy round: the pairs (:func:`on_policy_pairs`, sampled by rank 0 and handed to the other ranks) and
    the batch size, 0 when the round is skipped (no pair: every sample is correct; or fewer pairs than ranks)."""
    pairs = from_rank0(lambda: on_policy_pairs(model, tok, world, items, cfg.samples, seed))
    size = min(cfg.batch_size, len(pairs))
    size -= size % dist_info()[1]  # under torchrun N ranks share a batch of a multiple of N pairs
    return pairs, size


def dpo(cfg: DPODynamicsConfig, seed: int, model, tok, probes: ProbeSet, world: World, on_policy: bool = False,
        optimizer: str | None = None, lr: float | None = None, beta: float | None = None,
        dense: bool = False, snapshots: tuple[int, ...] = ()) -> dict:
    """DPO from ``model`` with ``model`` as reference, for ``cfg.dpo_epochs`` epochs, with the tracker, the mass
    split at y⁺/y⁻ positions and greedy answers (repetition) after every epoch (:class:`DPOWatch`). Off-policy: the
    world's pairs. On-policy: every epoch, pairs sampled from the current policy and ranked by the oracle
    (:func:`on_policy_round`); the reference log-probs of each new set are computed once, batched. ``dense``: the
    tracker also measures after every step of the first epoch (where SGD's brief rise of y⁺ happens).
    ``snapshots``: DPO epochs after which a copy of the model is kept (``run["models"][k]``; not saved in JSON).
    Under torchrun every rank trains, rank 0 alone measures (the others return ``{}``) and samples the on-policy
    pairs, which it hands to the others."""
    main = is_main()
    ref_model = copy.deepcopy(model).eval()
    model = copy.deepcopy(model)
    items = world.train_items()
    examples = probes.examples("train")
    spe = len(items) // min(cfg.batch_size, len(items))
    watch = DPOWatch(tok, probes, examples, spe, on_policy, dense, snapshots)
    if main:
        watch.start(model)
    tc = cfg.train_config("dpo", cfg.dpo_epochs * spe, seed, optimizer, lr, beta)
    t0 = time.perf_counter()
    trainer, pairs = None, []
    for e in range(cfg.dpo_epochs) if on_policy else [None]:
        if on_policy:
            ex, size = on_policy_round(cfg, model, tok, world, items, seed * 1000 + e)
            pairs.append(len(ex))
            if not size:  # nothing to push down this round, or not enough pairs to share: every rank skips it
                continue
        else:
            ex, size = examples, cfg.batch_size
        data = PreferenceData(tok, ex, size, model.config.block_size, seed,
                              reference=Reference.compute(ref_model, tok, ex))
        if trainer is None:
            trainer = Trainer(model, data, tc, tok)
        else:  # a new round of pairs: same model and optimizer state, new data
            trainer.data = data
        if on_policy:  # one round: one epoch over the new pairs
            trainer.cfg = replace(tc, steps=trainer.step + data.batches_per_epoch)
        try:
            trainer.run(watch if main else None)
        except TrainingDiverged as ex_:
            raise TrainingDiverged(f"DPO ({tc.optimizer}, lr {tc.lr:g}, β {tc.pair_loss['beta']:g}, seed {seed}) "
                                   f"diverged: lower --lr or --beta ({ex_})") from None
    train_s = time.perf_counter() - t0
    if not main:
        return {}
    return {"seed": seed, "optimizer": tc.optimizer, "lr": tc.lr, "beta": tc.pair_loss["beta"],
            "loss": tc.pair_loss["name"], "on_policy": on_policy, "steps_per_epoch": spe,
            "steps": trainer.step if trainer else 0, **watch.result(), "pairs_per_round": pairs,
            "seconds": round(train_s, 1), "models": watch.models}


# --------------------------------------------------------------------------------------------------------------
# claims (fixed rules, per seed)
# --------------------------------------------------------------------------------------------------------------


def judge_dpo(runs: list[dict]) -> list[dict]:
    """The paper's off-policy DPO claims, per seed, on the training prompts' mean curves. *Falls* = ends below its
    start; *falls fastest* = the largest drop of every tracked family; *bump* = its highest point comes after the
    start and before the end; *most families fall* = more than half of the families in FALLERS end below their
    start; *squeezed into the argmax* = at the positions of y⁻ and of y⁺, the argmax token's mass ends above its
    start."""
    out = []
    c = lambda r, f: r["curves"]["train"][f]  # noqa: E731
    fams = [f for f in FALLERS if f in runs[0]["curves"]["train"]]
    add_claim(out, "rejected falls", "y_u⁻ falls", [{"change": c(r, "rejected")[-1] - c(r, "rejected")[0],
                                                     "held": c(r, "rejected")[-1] < c(r, "rejected")[0]} for r in runs])

    def fastest(r):
        drops = {f: c(r, f)[0] - c(r, f)[-1] for f in fams}
        top = max(drops, key=drops.get)
        return {"change": -drops["rejected"], "largest": top, "held": top == "rejected"}
    add_claim(out, "rejected falls fastest", "y_u⁻ falls fastest of all families", [fastest(r) for r in runs])

    def bump(r):
        ys = c(r, "chosen")
        k = max(range(len(ys)), key=ys.__getitem__)
        return {"change": ys[-1] - ys[0], "peak": ys[k] - ys[0], "peak_epoch": r["measured_steps"][k] /
                r["steps_per_epoch"], "held": 0 < k < len(ys) - 1}
    add_claim(out, "chosen bumps, then declines", "y_u⁺ rises briefly, then declines", [bump(r) for r in runs])
    add_claim(out, "chosen ends below its start", "y_u⁺ falls (squeezing reaches the chosen answer)",
              [{"change": c(r, "chosen")[-1] - c(r, "chosen")[0], "held": c(r, "chosen")[-1] < c(r, "chosen")[0]}
               for r in runs])
    add_claim(out, "most families fall", "almost every response loses probability",
              [{"falling": sum(c(r, f)[-1] < c(r, f)[0] for f in fams), "of": len(fams),
                "held": sum(c(r, f)[-1] < c(r, f)[0] for f in fams) > len(fams) / 2} for r in runs])
    if "star" in runs[0]["curves"]["train"]:
        add_claim(out, "star rises", "y* (teacher-forced argmax) rises", [
            {"change": c(r, "star")[-1] - c(r, "star")[0], "held": c(r, "star")[-1] > c(r, "star")[0]} for r in runs])
    add_claim(out, "mass squeezed into the argmax", "the mass goes to the argmax token, at y⁺ and y⁻ positions", [
        {"argmax_gain_rejected": r["mass"][-1]["rejected"]["argmax"] - r["mass"][0]["rejected"]["argmax"],
         "argmax_gain_chosen": r["mass"][-1]["chosen"]["argmax"] - r["mass"][0]["chosen"]["argmax"],
         "held": r["mass"][-1]["rejected"]["argmax"] > r["mass"][0]["rejected"]["argmax"]
         and r["mass"][-1]["chosen"]["argmax"] > r["mass"][0]["chosen"]["argmax"]} for r in runs])
    add_claim(out, "repetition grows", "long DPO makes greedy answers repeat themselves (the repeater)", [
        {"change": r["repetition"][-1] - r["repetition"][0], "held": r["repetition"][-1] > r["repetition"][0]}
        for r in runs])
    return out


def _fmt(m: dict) -> str:
    if "largest" in m:
        return f"{m['change']:+.1f} (largest: {m['largest']})"
    if "peak_epoch" in m:
        return f"peak {m['peak']:+.1f} @ep{m['peak_epoch']:g}, end {m['change']:+.1f}"
    if "falling" in m:
        return f"{m['falling']}/{m['of']}"
    if "argmax_gain_rejected" in m:
        return f"y⁻ pos {m['argmax_gain_rejected']:+.3f}, y⁺ pos {m['argmax_gain_chosen']:+.3f}"
    if "wins" in m:
        return f"{m['wins']}-{m['ties']}-{m['losses']}"
    return f"{m['change']:+.2f}" if abs(m["change"]) < 1 else f"{m['change']:+.1f}"


def claims_table(claims: list[dict], title: str) -> str:
    """The claims with this experiment's per-seed measurements (:func:`tinyld.experiments.common.claims_table`)."""
    return shared_claims_table(claims, title, _fmt, width=34, unit="")


def squeeze_summary(r: dict) -> dict:
    """How much a DPO run squeezed (training prompts): change of y*, y⁺, y⁻, how many families fell, and the
    argmax mass gained at y⁻ and y⁺ positions."""
    c = r["curves"]["train"]
    fams = [f for f in FALLERS if f in c]
    return {"star": c["star"][-1] - c["star"][0] if "star" in c else None,
            "chosen": c["chosen"][-1] - c["chosen"][0], "rejected": c["rejected"][-1] - c["rejected"][0],
            "falling": sum(c[f][-1] < c[f][0] for f in fams), "families": len(fams),
            "argmax_gain_rejected": r["mass"][-1]["rejected"]["argmax"] - r["mass"][0]["rejected"]["argmax"],
            "argmax_gain_chosen": r["mass"][-1]["chosen"]["argmax"] - r["mass"][0]["chosen"]["argmax"]}


# --------------------------------------------------------------------------------------------------------------
# the experiments
# --------------------------------------------------------------------------------------------------------------


def _probes(model, tok, world: World) -> ProbeSet:
    probes = ProbeSet.from_world(world)
    return probes.with_init(model, tok) if is_main() else probes  # y_init is a measurement: rank 0's


def run_dynamics(cfg: DPODynamicsConfig, mode: str, out: Path) -> dict:
    main, runs, regimes = is_main(), [], []  # under torchrun the other ranks only train (and return {})
    for seed in cfg.seeds:
        model, tok, world = base(cfg, seed, mode)
        items = world.train_items()
        model = sft(cfg, seed, model, tok, [it.example() for it in items], sft_steps(cfg, len(items)))
        probes = _probes(model, tok, world)
        if not main:
            dpo(cfg, seed, model, tok, probes, world, dense=True)
            continue
        regimes.append(regime(model, tok, probes, world))
        r = dpo(cfg, seed, model, tok, probes, world, dense=True)
        r.pop("models")
        runs.append(r)
        s = squeeze_summary(r)
        print(f"  seed {seed}: y⁻ {s['rejected']:+.1f}, y⁺ {s['chosen']:+.1f}, y* {s['star']:+.1f} nats · "
              f"{s['falling']}/{s['families']} families fall · {r['seconds']} s", flush=True)
    if not main:
        return {}
    claims = judge_dpo(runs)
    res = {"regime_before_dpo": summary(regimes), "regime_per_seed": regimes, "claims": claims, "runs": runs}
    try:
        res["figure"] = str(figure(runs, out / f"fig4_{mode}.png", f"off-policy DPO, {mode} world ({runs[0]['loss']}"
                                   f" β {cfg.beta:g}, {cfg.optimizer} lr {cfg.lr:g}, {len(runs)} seeds)"))
        res["mass_figure"] = str(mass_figure(runs, out / f"mass_{mode}.png", f"where the mass goes, {mode} world"))
    except ImportError as e:
        print(f"  (no figure: {e})")
    return res


def run_extend(cfg: DPODynamicsConfig, mode: str, out: Path) -> dict:
    """Extend against the baseline in every seed (:func:`extend_seed`), the claims (:func:`judge_extend`) and the
    figure. Under torchrun the ranks other than 0 only train (and return ``{}``)."""
    per_seed = [extend_seed(cfg, seed, mode) for seed in cfg.seeds]
    if not is_main():
        return {}
    res = {"claims": judge_extend(per_seed), "per_seed": per_seed}
    try:
        res["figure"] = str(extend_figure(per_seed, out / f"extend_{mode}.png", f"extend vs baseline, {mode} world "
                                          f"(mean of {len(per_seed)} seeds)"))
    except ImportError as e:
        print(f"  (no figure: {e})")
    return res


def extend_seed(cfg: DPODynamicsConfig, seed: int, mode: str) -> dict:
    """One seed of extend against the baseline: each arm's SFT (log π during it), then DPO from it with snapshots
    after the :func:`win_epochs`, and the win rates of extend's sampled answers (:func:`win_rates`). Prints one line.
    Under torchrun the ranks other than 0 only train (and return ``{}``)."""
    main = is_main()
    model, tok, world = base(cfg, seed, mode)
    items = world.train_items()
    steps = sft_steps(cfg, len(items))
    probes = _probes(model, tok, world)
    arms = {}
    for arm, examples in (("baseline", [it.example() for it in items]),
                          ("extend", [e for it in items for e in (it.example(), Example(it.prompt, it.rejected))])):
        tr = None
        if main:  # log π during SFT
            tr = Tracker(tok, probes, every=max(1, steps // max(1, cfg.sft_epochs)), valley=False)
            tr.measure(model, 0)
        m = sft(cfg, seed, model, tok, examples, steps, tracker=tr)
        run = dpo(cfg, seed, m, tok, _probes(m, tok, world), world, snapshots=win_epochs(cfg))
        if not main:
            continue
        run["sft_rejected"] = tr.curve("rejected", "train")[1]
        run["sft_chosen"] = tr.curve("chosen", "train")[1]
        run["valley_before_dpo"] = valley_depth(m, tok)
        arms[arm] = run
    if not main:
        return {}
    win = win_rates(cfg, arms, tok, world, seed)
    for run in arms.values():
        run.pop("models")
    rec = {"seed": seed, "sft_steps": steps, "win": win,
           **{arm: {"squeeze": squeeze_summary(r), "sft_rejected": r["sft_rejected"],
                    "sft_chosen": r["sft_chosen"], "valley_before_dpo": r["valley_before_dpo"], "run": r}
              for arm, r in arms.items()}}
    sb, se = rec["baseline"]["squeeze"], rec["extend"]["squeeze"]
    print(f"  seed {seed}: after SFT log π(y⁻) baseline {rec['baseline']['sft_rejected'][-1]:.1f}, extend "
          f"{rec['extend']['sft_rejected'][-1]:.1f} · during DPO y* {sb['star']:+.1f} vs {se['star']:+.1f}, y⁺ "
          f"{sb['chosen']:+.1f} vs {se['chosen']:+.1f} · win/tie/loss of extend " +
          ", ".join(f"ep{x['dpo_epochs']} {x['wins']}/{x['ties']}/{x['losses']}" for x in win), flush=True)
    return rec


def win_rates(cfg: DPODynamicsConfig, arms: dict, tok, world: World, seed: int) -> list[dict]:
    """After each of the :func:`win_epochs`, extend's snapshot against the baseline's on ``cfg.samples`` sampled
    answers per held-out prompt, judged by the oracle: wins (extend correct, baseline not), losses, ties."""
    win = []
    for k in win_epochs(cfg):
        ca = sampled_correct(arms["extend"]["models"][k], tok, world, world.test_items(), cfg.samples, seed)
        cb = sampled_correct(arms["baseline"]["models"][k], tok, world, world.test_items(), cfg.samples, seed)
        w = sum(x and not y for ra, rb in zip(ca, cb) for x, y in zip(ra, rb))
        lo = sum(y and not x for ra, rb in zip(ca, cb) for x, y in zip(ra, rb))
        n = sum(len(r) for r in ca)
        win.append({"dpo_epochs": k, "wins": w, "losses": lo, "ties": n - w - lo, "n": n,
                    "win_rate_of_decided": w / (w + lo) if w + lo else None,
                    "extend_correct": sum(map(sum, ca)) / n, "baseline_correct": sum(map(sum, cb)) / n})
    return win


def judge_extend(per_seed: list[dict]) -> list[dict]:
    """The paper's claims about extend, per seed: y⁻ higher after its SFT, less squeezing of y* and y⁺ during DPO,
    and more wins than losses after the last of the :func:`win_epochs`."""
    claims = []
    add_claim(claims, "extend: y⁻ higher after SFT",
              "after extend's SFT, log π(y⁻) is higher than after the baseline's (y⁻ is lifted out of its valley)",
              [{"change": r["extend"]["sft_rejected"][-1] - r["baseline"]["sft_rejected"][-1],
                "held": r["extend"]["sft_rejected"][-1] > r["baseline"]["sft_rejected"][-1]} for r in per_seed])
    add_claim(claims, "extend squeezes less (y*)", "y* rises less during DPO after extend",
              [{"change": r["extend"]["squeeze"]["star"] - r["baseline"]["squeeze"]["star"],
                "held": r["extend"]["squeeze"]["star"] < r["baseline"]["squeeze"]["star"]} for r in per_seed])
    add_claim(claims, "extend: y⁺ falls less in DPO", "y⁺ falls less (or rises more) during DPO after extend",
              [{"change": r["extend"]["squeeze"]["chosen"] - r["baseline"]["squeeze"]["chosen"],
                "held": r["extend"]["squeeze"]["chosen"] > r["baseline"]["squeeze"]["chosen"]} for r in per_seed])
    last = lambda r: r["win"][-1]  # noqa: E731
    add_claim(claims, f"extend wins (after {per_seed[0]['win'][-1]['dpo_epochs']} DPO epochs)",
              "extend's sampled answers win more often than they lose (paper: 0.65–0.69 win rate)",
              [{"wins": last(r)["wins"], "ties": last(r)["ties"], "losses": last(r)["losses"],
                "held": last(r)["wins"] > last(r)["losses"]} for r in per_seed])
    return claims


def extend_figure(per_seed: list[dict], path: Path, title: str) -> Path:
    """Mean over seeds, extend against the baseline: log π(y⁻) during SFT, and y*, y⁺, y⁻ during DPO."""
    from tinyld.plots import condition_lines

    series = {}
    for key, label in (("sft_rejected", "log π(y⁻) during SFT"), ("star", "y* during DPO"),
                       ("chosen", "y⁺ during DPO"), ("rejected", "y⁻ during DPO")):
        series[label] = {}
        for arm in ("baseline", "extend"):
            ys = [r[arm][key] if key.startswith("sft") else r[arm]["run"]["curves"]["train"][key] for r in per_seed]
            n = len(ys[0])
            series[label][arm] = (list(range(n)), [statistics.fmean(y[i] for y in ys) for i in range(n)])
    return condition_lines(series, path, title, xlabel="measurement (once per epoch)")


def win_epochs(cfg: DPODynamicsConfig) -> tuple[int, ...]:
    """The DPO epochs after which extend and the baseline are compared on sampled answers: 2, 4, 6 (as the paper's
    Table 1), capped at the run's length."""
    return tuple(sorted({min(k, cfg.dpo_epochs) for k in (2, 4, 6)}))


def run_on_policy(cfg: DPODynamicsConfig, mode: str, out: Path, off: dict | None = None) -> dict:
    """On- against off-policy DPO from the same SFT model. ``off``: :func:`run_dynamics`'s result for the same
    config and mode, whose off-policy runs are reused (on ranks other than 0 it is ``{}``, and nothing is run for
    them); None: run them here."""
    main, per_seed = is_main(), []  # under torchrun the other ranks only train (and return {})
    for i, seed in enumerate(cfg.seeds):
        model, tok, world = base(cfg, seed, mode)
        items = world.train_items()
        model = sft(cfg, seed, model, tok, [it.example() for it in items], sft_steps(cfg, len(items)))
        probes = _probes(model, tok, world)
        off_run = dpo(cfg, seed, model, tok, probes, world, dense=True) if off is None else None
        on_run = dpo(cfg, seed, model, tok, probes, world, on_policy=True)
        if not main:
            continue
        off_run = off_run or off["runs"][i]
        on_run.pop("models")
        rec = {"seed": seed, "off": squeeze_summary(off_run), "on": squeeze_summary(on_run),
               "pairs_per_round": on_run["pairs_per_round"], "on_run": on_run}
        per_seed.append(rec)
        print(f"  seed {seed}: y* off {rec['off']['star']:+.1f} / on {rec['on']['star']:+.1f}, y⁺ off "
              f"{rec['off']['chosen']:+.1f} / on {rec['on']['chosen']:+.1f}, families falling off "
              f"{rec['off']['falling']} / on {rec['on']['falling']} · on-policy pairs per round "
              f"{on_run['pairs_per_round']}", flush=True)
    if not main:
        return {}
    claims = []
    add_claim(claims, "on-policy: y* rises less", "sampling y⁻ from the policy squeezes less: y* rises less",
              [{"change": r["on"]["star"] - r["off"]["star"], "held": r["on"]["star"] < r["off"]["star"]}
               for r in per_seed])
    add_claim(claims, "on-policy: fewer families fall", "fewer responses lose probability",
              [{"change": r["on"]["falling"] - r["off"]["falling"], "held": r["on"]["falling"] < r["off"]["falling"]}
               for r in per_seed])
    add_claim(claims, "on-policy: less argmax gain at y⁻", "less mass is squeezed into the argmax at y⁻ positions",
              [{"change": r["on"]["argmax_gain_rejected"] - r["off"]["argmax_gain_rejected"],
                "held": r["on"]["argmax_gain_rejected"] < r["off"]["argmax_gain_rejected"]} for r in per_seed])
    return {"claims": claims, "per_seed": per_seed}


def run_conditions(cfg: DPODynamicsConfig, mode: str, out: Path) -> dict:
    """The dynamics claims under: the default; a shallow valley (400 pretraining steps); plain SGD; β × 10;
    lr / 3 and lr × 3. SGD's learning rate is 10 × the default (DPO's β(1 − a) ≤ β scales its gradient)."""
    shallow = 400 if cfg.pretrain_steps > 400 else max(1, cfg.pretrain_steps // 10)
    conds = [("default", {}), ("shallow valley", {"pre": shallow}), ("sgd", {"optimizer": "sgd", "lr": 10 * cfg.lr}),
             (f"β {10 * cfg.beta:g}", {"beta": 10 * cfg.beta}), (f"lr {cfg.lr / 3:.2g}", {"lr": cfg.lr / 3}),
             (f"lr {cfg.lr * 3:.2g}", {"lr": cfg.lr * 3})]
    main, rows = is_main(), []  # under torchrun the other ranks only train (and return {})
    for name, kw in conds:
        runs, valleys = [], []
        for seed in cfg.seeds:
            model, tok, world = base(cfg, seed, mode, kw.get("pre"))
            items = world.train_items()
            model = sft(cfg, seed, model, tok, [it.example() for it in items], sft_steps(cfg, len(items)),
                        optimizer=kw.get("optimizer"), lr=kw.get("lr"))
            if main:
                valleys.append(valley_depth(model, tok))
            runs.append(dpo(cfg, seed, model, tok, _probes(model, tok, world), world, optimizer=kw.get("optimizer"),
                            lr=kw.get("lr"), beta=kw.get("beta"), dense=True))
            runs[-1].pop("models", None)
        if not main:
            continue
        cl = judge_dpo(runs)
        rows.append({"condition": name, "optimizer": kw.get("optimizer", cfg.optimizer), "lr": kw.get("lr", cfg.lr),
                     "beta": kw.get("beta", cfg.beta), "pretrain_steps": kw.get("pre", cfg.pretrain_steps),
                     "valley_depth": statistics.fmean(valleys),
                     "claims": {x["claim"]: f"{x['held']}/{x['of']}" for x in cl},
                     "squeeze": [squeeze_summary(r) for r in runs]})
        print(f"  {name}: valley {rows[-1]['valley_depth']:.1f} nats/token · " +
              ", ".join(f"{k} {v}" for k, v in rows[-1]["claims"].items()), flush=True)
    if not main:
        return {}
    heads = [r["condition"] for r in rows]
    table = [f"{'claim':34s}" + "".join(f"{h:>15s}" for h in heads),
             f"{'  optimizer, lr':34s}" + "".join(f"{r['optimizer']} {r['lr']:.2g}".rjust(15) for r in rows),
             f"{'  β':34s}" + "".join(f"{r['beta']:>15g}" for r in rows),
             f"{'  pretraining steps':34s}" + "".join(f"{r['pretrain_steps']:>15d}" for r in rows),
             f"{'  valley depth after SFT':34s}" + "".join(f"{r['valley_depth']:>15.1f}" for r in rows)]
    for n in rows[0]["claims"]:
        table.append(f"{n:34s}" + "".join(f"{r['claims'][n]:>15s}" for r in rows))
    write_text_atomic(out / f"conditions_{mode}.txt", "\n".join(table) + "\n")
    print("\n".join("  " + t for t in table))
    return {"rows": rows, "table": table}


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


# --------------------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------------------


def run(cfg: DPODynamicsConfig) -> dict:
    """Run the experiments of ``cfg``; write JSON, claims and figures into ``cfg.out``. Under torchrun the ranks
    other than 0 only join the training runs and return ``{}``."""
    if not isinstance(cfg, DPODynamicsConfig):
        raise TinyldError(f"run takes a DPODynamicsConfig, got {type(cfg).__name__}")
    pick_device(cfg.device)
    out = writable_dir(cfg.out, "dpo-dynamics output folder")  # by every rank: a bad folder stops them all at once
    with num_threads(cfg.threads):
        return _run(cfg, out)


def _run(cfg: DPODynamicsConfig, out: Path) -> dict:
    t0 = time.perf_counter()
    want = {cfg.experiment} if cfg.experiment != "all" else set(EXPERIMENTS) - {"all"}
    print("tinyld dpo-dynamics — what DPO does to every answer, squeezing, extend, on-policy (paper §3–§4)")
    print(f"  {pick_device(cfg.device)}, {cfg.threads} CPU threads · versions {json.dumps(versions())}\n"
          f"  config {json.dumps(asdict(cfg))}")
    print(f"  SFT then DPO ({cfg.loss}, β {cfg.beta:g}): {cfg.optimizer}, lr {cfg.lr:g} (constant, no clipping), "
          f"batch {cfg.batch_size}, {cfg.sft_epochs} SFT + {cfg.dpo_epochs} DPO epochs, seeds {cfg.seeds}")
    result = {"config": asdict(cfg), "versions": versions(), "modes": {}}
    texts = []
    main = is_main()  # under torchrun the other ranks join every training run and measure and write nothing
    for mode in cfg.modes:
        res = result["modes"][mode] = {}
        if want & {"dynamics", "on-policy"}:
            print(f"\n== off-policy DPO dynamics, {mode} world ==")
            res["dynamics"] = run_dynamics(cfg, mode, out)
        if want & {"dynamics", "on-policy"} and main:
            reg = res["dynamics"]["regime_before_dpo"]
            print(f"  regime before DPO (mean ± sd): log π(y⁺) {reg['logp_chosen']['mean']:.1f} ± "
                  f"{reg['logp_chosen']['sd']:.1f}, y* ≠ y⁺ at {reg['ystar_differs']['mean']:.2f} of positions, "
                  f"valley depth {reg['valley_depth']['mean']:.1f} ± {reg['valley_depth']['sd']:.1f} nats/token")
            texts.append(claims_table(res["dynamics"]["claims"], f"off-policy DPO, {mode} world"))
            print(texts[-1])
        if "on-policy" in want:
            print(f"\n== on-policy vs off-policy DPO, {mode} world ==")
            res["on_policy"] = run_on_policy(cfg, mode, out, res.get("dynamics"))
        if "on-policy" in want and main:
            texts.append(claims_table(res["on_policy"]["claims"], f"on-policy vs off-policy, {mode} world"))
            print(texts[-1])
        if "extend" in want:
            print(f"\n== extend vs baseline, {mode} world ==")
            res["extend"] = run_extend(cfg, mode, out)
        if "extend" in want and main:
            texts.append(claims_table(res["extend"]["claims"], f"extend vs baseline, {mode} world"))
            print(texts[-1])
        if "conditions" in want and mode == cfg.modes[0]:
            print(f"\n== conditions, {mode} world ==")
            res["conditions"] = run_conditions(cfg, mode, out)
    if not main:
        return {}
    result["runtime_s"] = round(time.perf_counter() - t0, 1)
    write_text_atomic(out / "dpo_dynamics.json", json.dumps(plain_json(result), indent=1, allow_nan=False))
    write_text_atomic(out / "claims.txt", "\n\n".join(texts) + "\n")
    print(f"\nwrote {out / 'dpo_dynamics.json'}, {out / 'claims.txt'} and figures in {out} · {result['runtime_s']} s")
    return result
