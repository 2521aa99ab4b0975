"""One SFT run of sft-dynamics with the probe tracker: the base model and probes of a seed (:func:`setup`), and the
run itself with answers classified after every epoch (:func:`sft_run`)."""
from __future__ import annotations

import copy
import time
from pathlib import Path

from tinyld.data import PairData
from tinyld.distributed import is_main
from tinyld.evaluate import greedy_answers
from tinyld.experiments.common import (first_step, item_of, lower_lr, user_setup, world_base, world_examples,
                                       world_probes)
from tinyld.experiments.sft_dynamics.config import SFTDynamicsConfig
from tinyld.probes import ProbeSet, Tracker
from tinyld.runtime import TrainingDiverged
from tinyld.train import TrainConfig, Trainer
from tinyld.world import ANSWER_KINDS, World


def setup(cfg: SFTDynamicsConfig, seed: int, mode: str):
    """(model, tokenizer, probes with y_init, world or None) for one seed and world mode (under torchrun the ranks
    other than 0 get no y_init: only rank 0 measures). A real LLM's probes are chat turns, and a subset
    (:func:`~tinyld.experiments.common.measured_probes`)."""
    if cfg.probes is not None:
        return user_setup(cfg, cfg.probes, seed)
    model, tok, world = world_base(cfg, seed, mode)
    return model, tok, world_probes(cfg, model, tok, world), world


def sft_config(cfg: SFTDynamicsConfig, seed: int, steps: int, log_every: int, optimizer: str | None = None,
               lr: float | None = None) -> TrainConfig:
    """The TrainConfig of a tracked SFT run (None: the config's optimizer and lr)."""
    return TrainConfig(task="sft", steps=steps, optimizer=optimizer or cfg.optimizer, lr=lr or cfg.lr, seed=seed,
                       grad_clip=cfg.grad_clip, log_every=log_every, progress=False)


def first_sft_step(cfg: SFTDynamicsConfig, seed: int, model, tok, probes: ProbeSet, world: World | None) -> dict:
    """The first step of the tracked run (its optimizer, lr and first batch) against its first-order prediction on
    the measured training-prompt probes (:func:`~tinyld.experiments.common.first_step`)."""
    examples = world_examples(cfg, tok, world) if world is not None else probes.examples("train")

    def step(m):
        data = PairData(tok, examples, cfg.batch_size, m.config.block_size, seed)
        Trainer(m, data, sft_config(cfg, seed, 1, 1), tok).run()
    return first_step(model, tok, probes, step)


def sft_run(cfg: SFTDynamicsConfig, seed: int, mode: str, model, tok, probes: ProbeSet, world: World | None,
            optimizer: str | None = None, lr: float | None = None, track: Path | None = None) -> dict:
    """SFT on the training split with the tracker (and, given a world, classified answers after every epoch);
    ``track``: where the tracker's table goes (CSV). Under torchrun the ranks other than 0 only train (and return
    ``{}``): rank 0 alone measures."""
    model = copy.deepcopy(model)
    examples = world_examples(cfg, tok, world) if world is not None else probes.examples("train")
    data = PairData(tok, examples, cfg.batch_size, model.config.block_size, seed)
    spe = data.batches_per_epoch
    steps = cfg.epochs * spe
    every = cfg.every or spe
    tc = sft_config(cfg, seed, steps, spe, optimizer, lr)

    def train(callback=None):
        try:
            return Trainer(model, data, tc, tok).run(callback)
        except TrainingDiverged as e:
            why = lower_lr(e, tc.lr, " or set --grad-clip")
            raise TrainingDiverged(f"SFT ({tc.optimizer}, seed {seed}, {mode}) diverged: {why} ({e.fact})", e.fact,
                                   e.updates) from None

    if not is_main():
        train()
        return {}
    tracker = Tracker(tok, probes, every=every)
    gens = {"epochs": [], "counts": {"train": [], "test": []}, "examples": []}
    gen_s = [0.0]
    if world is not None:  # fixed for the run: the world's items by prompt, and how long an answer may be
        max_new = max(len(tok.encode(p.responses["chosen"])) for p in probes.probes) + 4

    def generations(m, step):
        t = time.perf_counter()
        answers = greedy_answers(m, tok, [p.prompt for p in probes.probes], max_new)
        gens["epochs"].append(step // spe)
        kinds = [world.classify(item_of(world, p), a) for p, a in zip(probes.probes, answers)]
        for split in ("train", "test"):
            ks = [k for p, k in zip(probes.probes, kinds) if p.split == split]
            gens["counts"][split].append({k: ks.count(k) for k in ANSWER_KINDS})
        gens["examples"].append([{"prompt": p.prompt, "answer": a, "split": p.split} for p, a, k in
                                 zip(probes.probes, answers, kinds) if k == "other_question"][:4])
        gen_s[0] += time.perf_counter() - t

    def callback(trainer, step):
        tracker(trainer, step)
        if world is not None and step % spe == 0:
            generations(trainer.model, step)

    tracker.measure(model, 0)
    if world is not None:
        generations(model, 0)
    before = tracker.seconds + gen_s[0]  # step 0's measurements, taken before the clock starts
    t0 = time.perf_counter()
    hist = train(callback)
    train_s = time.perf_counter() - t0 - (tracker.seconds + gen_s[0] - before)
    run = {"seed": seed, "mode": mode, "optimizer": tc.optimizer, "lr": tc.lr, "steps": steps,
           "steps_per_epoch": spe, "every": every, "loss": [r["loss"] for r in hist],
           "curves": {split: {f: tracker.curve(f, split)[1] for f in probes.families} for split in ("train", "test")},
           "measured_steps": tracker.curve("chosen", "train")[0],
           "valley_depth": [r["valley_depth"] for r in tracker.steps],
           "top1_chosen": tracker.curve("chosen", "train", "top1")[1],
           "peakiness_chosen": tracker.curve("chosen", "train", "peakiness")[1],
           "seconds": {"train": train_s, "tracker": tracker.seconds, "generations": gen_s[0]},
           "tracker_cost": tracker.seconds / max(train_s, 1e-9)}
    if world is not None:
        run["generations"] = gens
    if track is not None:
        tracker.save(track)
    return run

