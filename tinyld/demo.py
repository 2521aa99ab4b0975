"""The main job: pretrain a tiny GPT on the synthetic world, finetune it on instructions, report what happened.

``python -m tinyld demo`` runs it on the embedded default (nothing to download) and writes ``demo.json``.
Every number it prints is recomputed here from the model; nothing is hard-coded.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tinyld.choose import model_choice
from tinyld.data import PairData, TextStream, make_batch
from tinyld.distributed import is_main
from tinyld.dynamics import one_step, step_size_for
from tinyld.evaluate import greedy_answers, response_logprobs, text_stats, valley_depth
from tinyld.model import GPT, GPTConfig
from tinyld.pretrained import TINY_RECIPE, pretrain
from tinyld.runtime import (TinyldError, TrainingDiverged, check_choice, check_int, check_number, check_seed,
                            num_threads, pick_device, seed_everything, versions, writable_dir)
from tinyld.train import TrainConfig, Trainer
from tinyld.updates import SFTUpdate, lm_rows
from tinyld.world import World


@dataclass
class DemoConfig:
    # stage 1, pretraining: the tiny base-model recipe (tinyld.pretrained.TinyRecipe), one field each
    seed: int = TINY_RECIPE.seed  # one seed for the world, the init and the data order
    model: str = TINY_RECIPE.preset  # tiny or mini: the shape trained from scratch; vocab: the world tokenizer's
    pretrain_steps: int = TINY_RECIPE.pretrain_steps  # next-token steps on the world's text
    pretrain_lr: float = TINY_RECIPE.pretrain_lr  # AdamW, 50 warm-up steps, cosine decay
    batch_size: int = TINY_RECIPE.batch_size  # windows of block_size tokens per pretraining step
    # stage 2, SFT
    sft_steps: int = 60  # SFT steps on the 40 training prompts (8 per batch: 12 epochs)
    sft_lr: float = 1e-3  # AdamW
    out: str = "tinyld_out"  # demo.json, log files and checkpoints go here
    device: str = "cpu"  # auto | cpu | cuda | mps
    threads: int = TINY_RECIPE.threads  # CPU threads. Pinned: float sums, and so the model, depend on them
    fast: bool = False  # a few steps of each phase (smoke test; the numbers then mean little)
    preset: str = field(default=TINY_RECIPE.preset, init=False)  # the GPTConfig preset: from model

    def __post_init__(self):
        self.seed = check_seed("demo --seed", self.seed)
        self.preset = model_choice(self.model, "demo", ("tiny", "mini"), "demo trains a world model from scratch; "
                                   "sft-dynamics and dpo-dynamics take gpt2, smollm2 and the rest").name
        self.pretrain_steps = check_int("demo --pretrain-steps", self.pretrain_steps, 1)
        self.pretrain_lr = check_number("demo --pretrain-lr", self.pretrain_lr, 0, strict=True)
        self.batch_size = check_int("DemoConfig.batch_size", self.batch_size, 1)
        self.sft_steps = check_int("demo --sft-steps", self.sft_steps, 1)
        self.sft_lr = check_number("demo --sft-lr", self.sft_lr, 0, strict=True)
        check_choice("demo --device", self.device, ("auto", "cpu", "cuda", "mps"))
        self.threads = check_int("demo --threads", self.threads, 1, 256)
        if not isinstance(self.out, (str, os.PathLike)) or not str(self.out).strip():
            raise TinyldError(f"demo --out must be a folder path, got {self.out!r}")
        if self.fast:
            self.pretrain_steps, self.sft_steps = min(self.pretrain_steps, 60), min(self.sft_steps, 10)


def report(model, tok, world: World) -> dict:
    """Confidence on held-out world text, valley depth, and answers to training / held-out prompts."""
    train, test = world.train_items(), world.test_items()
    res = {"heldout_text": text_stats(model, tok, world.heldout_text()), "valley_depth": valley_depth(model, tok)}
    for name, items in (("train", train), ("test", test)):
        lp = response_logprobs(model, tok, [i.prompt for i in items], [i.chosen for i in items])
        ans = greedy_answers(model, tok, [i.prompt for i in items])
        res[name] = {"logp_chosen": lp.mean().item(),
                     "accuracy": sum(a == i.chosen for a, i in zip(ans, items)) / len(items),
                     "examples": [{"prompt": i.prompt, "answer": a, "correct": i.chosen} for i, a in
                                  zip(items[:3], ans[:3])]}
    return res


def run_demo(cfg: DemoConfig) -> dict:
    """Run the main job with ``cfg.threads`` CPU threads (the previous thread count is restored afterwards)."""
    if not isinstance(cfg, DemoConfig):
        raise TinyldError(f"run_demo takes a DemoConfig, got {type(cfg).__name__}")
    out = writable_dir(cfg.out, "demo output folder")  # before minutes of pretraining, not after
    for sub in ("pretrain", "sft"):
        writable_dir(out / sub, f"demo output folder {sub!r}")
        if (out / sub / "last.pt").is_dir():
            raise TinyldError(f"{out / sub / 'last.pt'} is a folder: the demo writes a checkpoint there; remove it")
    if (out / "demo.json").is_dir():
        raise TinyldError(f"{out / 'demo.json'} is a folder: the demo writes its results there; remove it")
    dev = pick_device(cfg.device)
    with num_threads(cfg.threads):
        return _run_demo(cfg, out, dev)


def _run_demo(cfg: DemoConfig, out: Path, dev) -> dict:
    t0 = time.perf_counter()
    print("tinyld demo — pretrain a tiny GPT on a synthetic world, then finetune it on instructions")
    print(f"  {dev}, {cfg.threads} CPU threads\n  versions: {json.dumps(versions())}\n"
          f"  config: {json.dumps(asdict(cfg))}")
    seed_everything(cfg.seed)
    world = World(cfg.seed)
    tok = world.tokenizer()
    docs = world.pretrain_docs()
    n_tok = sum(len(tok.encode(d)) + 1 for d in docs)
    print(f"\n[1/5] world: {len(world.people)} people × 5 relations, {tok.vocab_size} words; {len(docs)} "
          f"pretraining docs ({n_tok} tokens); {len(world.train_items())} training prompts, "
          f"{len(world.test_items())} held out")
    print(f"      e.g. {docs[0][:90]}…")

    print(f"\n[2/5] pretraining '{cfg.preset}' for {cfg.pretrain_steps} steps (AdamW, lr {cfg.pretrain_lr})")
    t = time.perf_counter()
    model, hist = pretrain(world, tok, cfg, dev.device, out / "pretrain")
    print(f"      {model.num_params():,} parameters · loss {hist[0]['loss']:.3f} → {hist[-1]['loss']:.4f} "
          f"in {time.perf_counter() - t:.1f} s")
    if not is_main():  # under torchrun the other ranks join the SFT steps; only rank 0 measures and writes
        _sft(cfg, model, tok, world, out)
        return {}
    base = report(model, tok, world)
    ht = base["heldout_text"]
    print(f"      held-out world text: mean top-1 probability {ht['top1']:.3f}, "
          f"log-prob {ht['logp_per_token']:.2f} nats/token")
    print(f"      valley depth (random words): {base['valley_depth']:.1f} nats/token "
          f"(uniform would be {-torch.log(torch.tensor(tok.vocab_size - 3.0)).item():.1f})")
    print("      where the model is confident — P(next word) along a held-out sentence:")
    print("      " + confidence_line(model, tok, world.heldout_text()[0]))

    print("\n[3/5] one SGD step, predicted (−η·A·K·G) vs actual, on the probe families of one prompt (float64)")
    base["decomposition"] = decomposition_check(model, tok, world)
    print(f"\n[4/5] SFT on {len(world.train_items())} prompts for {cfg.sft_steps} steps (AdamW, lr {cfg.sft_lr}; "
          "loss = −log π(y⁺|x) summed over response tokens)")
    sft_hist = _sft(cfg, model, tok, world, out)
    print("      loss " + " → ".join(f"{r['loss']:.2f}" for r in sft_hist[:: max(1, len(sft_hist) // 6)]))
    after = report(model.eval(), tok, world)
    print(f"\n[5/5] {'':28s}{'before SFT':>14s}{'after SFT':>14s}")
    for split in ("train", "test"):
        b, a = base[split], after[split]
        print(f"      {split + ' log π(y⁺|x)':28s}{b['logp_chosen']:14.2f}{a['logp_chosen']:14.2f}")
        print(f"      {split + ' greedy accuracy':28s}{b['accuracy']:14.2f}{a['accuracy']:14.2f}")
    print(f"      {'valley depth':28s}{base['valley_depth']:14.1f}{after['valley_depth']:14.1f}")
    print("      generations after SFT (held-out prompts):")
    for e in after["test"]["examples"]:
        mark = "✓" if e["answer"] == e["correct"] else f"✗ (correct: {e['correct']})"
        print(f"        {e['prompt']}  →  {e['answer']}  {mark}")
    result = {"config": asdict(cfg), "versions": versions(), "params": model.num_params(),
              "pretrain": {"losses": hist, **base}, "sft": {"losses": sft_hist, **after},
              "runtime_s": round(time.perf_counter() - t0, 1)}
    (out / "demo.json").write_text(json.dumps(result, indent=1))
    print(f"\nwrote {out / 'demo.json'} · checkpoints in {out}/pretrain, {out}/sft · {result['runtime_s']} s")
    return result


def _sft(cfg: DemoConfig, model, tok, world: World, out: Path) -> list[dict]:
    """The demo's SFT stage: AdamW on the training prompts, logged and checkpointed in out/sft."""
    data = PairData(tok, [i.example("train") for i in world.train_items()], 8, model.config.block_size, cfg.seed)
    tc = TrainConfig(task="sft", steps=cfg.sft_steps, lr=cfg.sft_lr, seed=cfg.seed, log_every=5,
                     out_dir=str(out / "sft"))
    try:
        sft_hist = Trainer(model, data, tc, tok).run(overwrite=True)
    except TrainingDiverged as e:
        raise TrainingDiverged(f"SFT diverged (lower --sft-lr, now {cfg.sft_lr:g}); the pretrained model is in "
                               f"{out / 'pretrain' / 'last.pt'}: {e}") from None
    return sft_hist


def decomposition_check(model, tok, world: World, target: float = 0.1) -> dict:
    """One SFT step on a training prompt: predicted vs actual Δ log π(y|x_u) for every probe family. η is
    chosen so that no family is predicted to move by more than ``target`` nats."""
    m = copy.deepcopy(model).double().eval()
    item = world.train_items()[0]
    probes = world.probes(item)
    obs = lm_rows(make_batch(tok, [item.prompt] * len(probes), list(probes.values())))
    update = SFTUpdate(lm_rows(make_batch(tok, [item.prompt], [item.chosen])))
    eta = step_size_for(m, update, obs, target)
    rep = one_step(m, update, obs, eta)
    print(f"      update: {item.prompt} {item.chosen}   (η = {eta:.3g})")
    print(f"      {'family':16s}{'predicted':>12s}{'actual':>12s}")
    for k, name in enumerate(probes):
        print(f"      {name:16s}{rep.pred_seq[k]:12.4f}{rep.actual_seq[k]:12.4f}")
    print(f"      relative error: sequences {rep.err_seq:.2e}, full vocabulary {rep.err_full:.2e}")
    return {"eta": eta, "families": list(probes), "predicted": rep.pred_seq.tolist(),
            "actual": rep.actual_seq.tolist(), "rel_err_seq": rep.err_seq, "rel_err_full": rep.err_full}


@torch.no_grad()
def confidence_line(model, tok, text: str, n_words: int = 10) -> str:
    ids = tok.encode(text)[: n_words + 1]
    p = model(torch.tensor([ids], device=next(model.parameters()).device))[0].softmax(-1)  # (T, V)
    return " ".join(f"{tok.decode([ids[t + 1]])}({p[t, ids[t + 1]].item():.2f})" for t in range(len(ids) - 1))


def golden_losses() -> dict:
    """First training losses on a fixed seed, float64 on the CPU: pretraining and SFT with each optimizer."""
    world = World(0)
    tok = world.tokenizer()
    out = {}
    for task in ("pretrain", "sft"):
        for opt in ("sgd", "adamw", "rmsprop"):
            torch.manual_seed(0)
            model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).double()
            data = (TextStream(tok, world.pretrain_docs(), 32, 4, seed=0) if task == "pretrain" else
                    PairData(tok, [i.example() for i in world.train_items()], 4, seed=0))
            cfg = TrainConfig(task=task, optimizer=opt, steps=5, lr=1e-2, warmup_steps=2, log_every=1,
                              progress=False)
            out[f"{task}/{opt}"] = [r["loss"] for r in Trainer(model, data, cfg, tok).run()]
    return out
