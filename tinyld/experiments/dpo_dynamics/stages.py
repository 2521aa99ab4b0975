"""The pieces of every DPO experiment: the base model and its SFT stage, the measurements (where the mass goes, the
repeater, sampled answers judged by the oracle, on-policy pairs), and one DPO run with all its measurements."""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import replace

import torch

from tinyld.data import Example
from tinyld.distributed import dist_info, from_rank0, is_main
from tinyld.evaluate import greedy_answers, sampled_answers
from tinyld.experiments.common import first_step, item_of, lower_lr, sft_stage, stage_steps, world_base, world_probes
from tinyld.experiments.dpo_dynamics.config import DPODynamicsConfig
from tinyld.preference import PreferenceData, Reference
from tinyld.probes import ProbeSet, Tracker
from tinyld.runtime import TrainingDiverged
from tinyld.squeeze import MASS_CLASSES, token_mass
from tinyld.train import Trainer
from tinyld.world import ANSWER_KINDS, World


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
    b, t, other = mass_batch(model, tok, examples)
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
    b, _, _ = mass_batch(model, tok, examples)
    return model.eval()(b.seqs.idx).argmax(-1)


def mass_batch(model, tok, examples):
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
                 snapshots: tuple[int, ...], world: World | None = None):
        self.tok, self.probes, self.examples, self.spe, self.world = tok, probes, examples, spe, world
        self.on_policy, self.dense, self.snapshots = on_policy, dense, snapshots
        self.tracker = Tracker(tok, probes, every=spe, valley=True)
        self.measured = {"mass": [], "repetition": [], "mass_steps": [], "answers": {"train": [], "test": []}}
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
            answers = greedy_answers(m, self.tok, self.prompts, self.max_new)
            self.measured["repetition"].append(repetition(answers))
            if self.world is not None:  # the answer classes: correct / wrong value / another question's / other
                kinds = [self.world.classify(item_of(self.world, p), a) for p, a in zip(self.probes.probes, answers)]
                for split in ("train", "test"):
                    ks = [k for p, k in zip(self.probes.probes, kinds) if p.split == split]
                    self.measured["answers"][split].append({k: ks.count(k) for k in ANSWER_KINDS})

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
                "repetition": measured["repetition"], "answer_classes": measured["answers"]}


def on_policy_round(cfg: DPODynamicsConfig, model, tok, world: World, items, seed: int) -> tuple[list[Example], int]:
    """One on-policy round: the pairs (:func:`on_policy_pairs`, sampled by rank 0 and handed to the other ranks) and
    the batch size, 0 when the round is skipped (no pair: every sample is correct; or fewer pairs than ranks)."""
    pairs = from_rank0(lambda: on_policy_pairs(model, tok, world, items, cfg.samples, seed))
    size = min(cfg.batch_size, len(pairs))
    size -= size % dist_info()[1]  # under torchrun N ranks share a batch of a multiple of N pairs
    return pairs, size


def dpo(cfg: DPODynamicsConfig, seed: int, model, tok, probes: ProbeSet, world: World | None,
        on_policy: bool = False, optimizer: str | None = None, lr: float | None = None, beta: float | None = None,
        dense: bool = False, snapshots: tuple[int, ...] = (), examples: list[Example] | None = None,
        check: bool = False) -> dict:
    """DPO from ``model`` with ``model`` as reference, for ``cfg.dpo_epochs`` epochs, with the tracker, the mass
    split at y⁺/y⁻ positions and greedy answers (repetition) after every epoch (:class:`DPOWatch`). Off-policy: the
    world's pairs. On-policy: every epoch, pairs sampled from the current policy and ranked by the oracle
    (:func:`on_policy_round`); the reference log-probs of each new set are computed once, batched. ``dense``: the
    tracker also measures after every step of the first epoch (where SGD's brief rise of y⁺ happens).
    ``snapshots``: DPO epochs after which a copy of the model is kept (``run["models"][k]``; not saved in JSON).
    ``examples``: the off-policy pairs (None: the probes' training split; the mass split is measured on that split
    either way). ``check``: first compare the first step with its first-order prediction on the probes
    (:func:`~tinyld.experiments.common.first_step`, ``run["first_step"]``).
    Under torchrun every rank trains, rank 0 alone measures (the others return ``{}``) and samples the on-policy
    pairs, which it hands to the others."""
    main = is_main()
    ref_model = copy.deepcopy(model).eval()
    model = copy.deepcopy(model)
    items = world.train_items() if on_policy else None
    examples = probes.examples("train") if examples is None else examples
    spe = len(examples) // min(cfg.batch_size, len(examples))
    watch = DPOWatch(tok, probes, probes.examples("train"), spe, on_policy, dense, snapshots, world)
    if main:
        watch.start(model)
    tc = cfg.train_config("dpo", cfg.dpo_epochs * spe, seed, optimizer, lr, beta)
    t0 = time.perf_counter()
    trainer, pairs, first = None, [], None
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
        if check and main and trainer is None:
            first = first_step(model, tok, probes, lambda m: Trainer(m, data, replace(tc, steps=1), tok).run())
        if trainer is None:
            trainer = Trainer(model, data, tc, tok)
        else:  # a new round of pairs: same model and optimizer state, new data
            trainer.data = data
        if on_policy:  # one round: one epoch over the new pairs
            trainer.cfg = replace(tc, steps=trainer.step + data.batches_per_epoch)
        try:
            trainer.run(watch if main else None)
        except TrainingDiverged as e:
            b = tc.pair_loss["beta"]
            why = f"{lower_lr(e, tc.lr)}: lower --beta (now {b:g})" if e.updates == 0 else \
                f"lower --lr (now {tc.lr:g}) or --beta (now {b:g})"
            raise TrainingDiverged(f"DPO ({tc.optimizer}, seed {seed}) diverged: {why} ({e.fact})", e.fact,
                                   e.updates) from None
    train_s = time.perf_counter() - t0
    if not main:
        return {}
    return {"seed": seed, "optimizer": tc.optimizer, "lr": tc.lr, "beta": tc.pair_loss["beta"],
            "loss": tc.pair_loss["name"], "on_policy": on_policy, "steps_per_epoch": spe,
            "steps": trainer.step if trainer else 0, **watch.result(), "pairs_per_round": pairs,
            "seconds": round(train_s, 1), "models": watch.models, **({"first_step": first} if check else {})}



def probes_for(model, tok, world: World, cfg: DPODynamicsConfig | None = None) -> ProbeSet:
    """The world's probes as ``cfg``'s model reads them (None: a world model's), with y_init (a measurement: rank
    0's) from ``model`` (:func:`~tinyld.experiments.common.world_probes`)."""
    if cfg is None:
        probes = ProbeSet.from_world(world)
        return probes.with_init(model, tok) if is_main() else probes
    return world_probes(cfg, model, tok, world)
