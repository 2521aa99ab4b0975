"""One SFT run of sft-dynamics with the probe tracker: the base model and probes of a seed (:func:`setup`), and the
run itself with answers classified after every epoch (:func:`sft_run`)."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from tinyld.data import PairData
from tinyld.distributed import is_main
from tinyld.evaluate import greedy_answers
from tinyld.experiments.common import lower_lr, world_base
from tinyld.experiments.sft_dynamics.config import SFTDynamicsConfig
from tinyld.model import GPT, PRESETS, GPTConfig
from tinyld.probes import ProbeSet, Tracker
from tinyld.runtime import TinyldError, TrainingDiverged, pick_device
from tinyld.tokenizers import GPT2BPE
from tinyld.train import TrainConfig, Trainer
from tinyld.world import ANSWER_KINDS, World


def setup(cfg: SFTDynamicsConfig, seed: int, mode: str):
    """(model, tokenizer, probes with y_init, world or None) for one seed and world mode (under torchrun the ranks
    other than 0 get no y_init: only rank 0 measures)."""
    if cfg.probes is not None:
        return _user_setup(cfg, seed)
    model, tok, world = world_base(cfg, seed, mode)
    probes = ProbeSet.from_world(world)
    return model, tok, probes.with_init(model, tok) if is_main() else probes, world  # y_init: a measurement


def check_user_model(cfg: SFTDynamicsConfig) -> None:
    """``--model`` (with your own probes) names a preset or a folder."""
    if cfg.model not in PRESETS and not Path(cfg.model).is_dir():
        raise TinyldError(f"sft-dynamics --model {cfg.model!r} is neither a preset ({', '.join(PRESETS)}) nor a "
                          "folder with a Hugging Face GPT-2 checkpoint")


def _user_setup(cfg: SFTDynamicsConfig, seed: int):
    probes = ProbeSet.load(cfg.probes)
    tok = GPT2BPE()
    check_user_model(cfg)
    if cfg.model in PRESETS:
        torch.manual_seed(seed)
        model = GPT(GPTConfig.preset(cfg.model, vocab_size=tok.vocab_size))  # random init: says nothing of GPT-2
    else:
        model = GPT.from_hf(cfg.model)
    if model.config.vocab_size != tok.vocab_size:
        raise TinyldError(f"the model's vocab_size is {model.config.vocab_size}, the GPT-2 BPE has "
                          f"{tok.vocab_size}: give a GPT-2 model")
    probes.check_fits(tok, model.config.block_size)
    if cfg.model in PRESETS and seed == cfg.seeds[0]:
        print(f"  note: --model {cfg.model} is a randomly initialised {cfg.model!r} GPT (seed {seed}), not trained "
              "weights: its curves say nothing about a pretrained model")
    model = model.to(pick_device(cfg.device).device)
    return model.eval(), tok, probes.with_init(model, tok) if is_main() else probes, None


def sft_run(cfg: SFTDynamicsConfig, seed: int, mode: str, model, tok, probes: ProbeSet, world: World | None,
            optimizer: str | None = None, lr: float | None = None, track: Path | None = None) -> dict:
    """SFT on the training split with the tracker (and, given a world, classified answers after every epoch);
    ``track``: where the tracker's table goes (CSV). Under torchrun the ranks other than 0 only train (and return
    ``{}``): rank 0 alone measures."""
    model = copy.deepcopy(model)
    examples = probes.examples("train")
    data = PairData(tok, examples, cfg.batch_size, model.config.block_size, seed)
    spe = data.batches_per_epoch
    steps = cfg.epochs * spe
    every = cfg.every or spe
    tc = TrainConfig(task="sft", steps=steps, optimizer=optimizer or cfg.optimizer, lr=lr or cfg.lr, seed=seed,
                     grad_clip=cfg.grad_clip, log_every=spe, progress=False)

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
        items = {it.prompt: it for it in world.train_items() + world.test_items()}
        max_new = max(len(tok.encode(p.responses["chosen"])) for p in probes.probes) + 4

    def generations(m, step):
        t = time.perf_counter()
        answers = greedy_answers(m, tok, [p.prompt for p in probes.probes], max_new)
        gens["epochs"].append(step // spe)
        kinds = [world.classify(items[p.prompt], a) for p, a in zip(probes.probes, answers)]
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

