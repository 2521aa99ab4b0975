"""What the experiments share: the checks of the config fields they have in common, the pretrained world model and
the SFT stage that DPO starts from, the base model's regime and the per-family figure. The run itself (its folder,
header, claims and JSON) is the kit's: :mod:`tinyld.experiments.kit`.

No experiment imports another: each takes what it shares with the others from here.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tinyld.data import Example, PairData, make_batch
from tinyld.evaluate import valley_depth
from tinyld.pretrained import GPT2_RECIPE, TINY_RECIPE, pretrained
from tinyld.probes import FAMILIES, ProbeSet, position_stats
from tinyld.runtime import TinyldError, TrainingDiverged, check_choice, check_int, check_seed, pick_device
from tinyld.train import TrainConfig, Trainer
from tinyld.world import World

# --------------------------------------------------------------------------------------------------------------
# config fields every experiment has
# --------------------------------------------------------------------------------------------------------------


def check_shared(cfg, command: str) -> None:
    """Check (and normalise) the fields every experiment config has: distinct seeds, threads, device, out."""
    if isinstance(cfg.seeds, int) or not isinstance(cfg.seeds, (list, tuple)) or not cfg.seeds \
            or not all(isinstance(s, int) for s in cfg.seeds):
        raise TinyldError(f"{command} --seeds must be a list of integers, got {cfg.seeds!r}")
    cfg.seeds = [check_seed(f"{command} --seeds", s) for s in cfg.seeds]
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise TinyldError(f"{command} --seeds repeats a seed: {cfg.seeds}")
    cfg.threads = check_int(f"{command} --threads", cfg.threads, 1, 256)
    check_choice(f"{command} --device", cfg.device, ("auto", "cpu", "cuda", "mps"))
    if not isinstance(cfg.out, (str, os.PathLike)) or not str(cfg.out).strip():
        raise TinyldError(f"{command} --out must be a folder path, got {cfg.out!r}")
    cfg.out = str(cfg.out)  # a Path too: the config is recorded as JSON


def fast_caps(cfg, caps: dict) -> list[str]:
    """Fast mode: cap each field of ``cfg`` named in ``caps`` at its value, and say what changed
    (:func:`changed_note`)."""
    before = {name: getattr(cfg, name) for name in caps}
    for name, cap in caps.items():
        setattr(cfg, name, min(getattr(cfg, name), cap))
    return changed_note(cfg, before)


def changed_note(cfg, before: dict) -> list[str]:
    """One line naming each field of ``cfg`` whose value differs from ``before`` (none: no line). The config records
    the values the run uses; this line says that fast mode changed them."""
    changed = [f"{k} {shown(v)} → {shown(getattr(cfg, k))}" for k, v in before.items() if getattr(cfg, k) != v]
    return [f"fast mode uses {', '.join(changed)}"] if changed else []


def shown(value) -> str:
    """A value as a message shows it: lists space-separated, floats with :g."""
    if isinstance(value, (list, tuple)):
        return " ".join(shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_base_model(cfg, command: str) -> None:
    """Resolve and check the base-model fields the world experiments share: preset, hf, pretrain_steps, device."""
    if cfg.hf is not None:
        if not isinstance(cfg.hf, (str, os.PathLike)) or not str(cfg.hf).strip() or not Path(cfg.hf).is_dir():
            raise TinyldError(f"{command} --hf {cfg.hf!r} is not a folder: give a local Hugging Face GPT-2 folder "
                              "(config.json + model.safetensors or pytorch_model.bin)")
        cfg.hf = str(cfg.hf)
        if cfg.preset == "tiny":
            raise TinyldError(f"{command}: --hf loads GPT-2 with the GPT-2 BPE; it goes with --preset gpt2 (or no "
                              "--preset), not tiny")
    if cfg.preset is None:
        cfg.preset = "gpt2" if cfg.hf is not None else "tiny"
    check_choice(f"{command} --preset", cfg.preset, ("tiny", "gpt2"))
    if cfg.pretrain_steps is None:
        cfg.pretrain_steps = GPT2_RECIPE["steps"] if cfg.preset == "gpt2" else TINY_RECIPE.pretrain_steps
    cfg.pretrain_steps = check_int(f"{command} --pretrain-steps", cfg.pretrain_steps, 1)
    if cfg.device is None:
        cfg.device = "auto" if cfg.preset == "gpt2" else "cpu"


@dataclass
class BaseModelConfig:
    """The base-model fields of a world experiment's config on their own, resolved and checked as theirs
    (:func:`check_base_model`): the world model for a caller without such a config (forecast's CHES)."""
    pretrain_steps: int | None = None  # None: TINY_RECIPE.pretrain_steps tiny, GPT2_RECIPE["steps"] gpt2
    preset: str | None = None  # tiny (default) or gpt2
    hf: str | None = None  # a local Hugging Face GPT-2 folder to start the gpt2 pretraining from
    device: str | None = None  # None: cpu for tiny, auto for gpt2

    def __post_init__(self):
        check_base_model(self, "base model")


# --------------------------------------------------------------------------------------------------------------
# the world model, and the SFT stage before DPO
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldSFT:
    """The default SFT stage on the world's y⁺ that DPO starts from. dpo-dynamics' config reads its defaults from
    here, and forecast's CHES measures the model this stage makes, so the two cannot drift apart."""
    epochs: int = 4  # passes over the training prompts
    fast_epochs: int = 2  # at most this many in fast mode
    optimizer: str = "adamw"  # constant learning rate, no clipping (:func:`stage_config`)
    lr: float = 1e-3
    batch_size: int = 8  # prompts per step (40 training prompts: 5 steps per epoch)


WORLD_SFT = WorldSFT()


def base_model(cfg, seed: int, steps: int | None = None):
    """(tokenizer, model on cfg.device) for one seed: the cached pretrained world model of ``cfg.preset``. A GPT-2
    on a GPU trains on the fast path (fused attention, bf16 autocast)."""
    dev = pick_device(cfg.device).device
    _, tok, model = pretrained(seed, steps=steps or cfg.pretrain_steps, preset=cfg.preset, hf=cfg.hf,
                               device=cfg.device)
    model = model.to(dev).eval()
    return tok, model.use_fast(cfg.preset == "gpt2" and dev.type == "cuda")


def world_base(cfg, seed: int, mode: str, pretrain_steps: int | None = None):
    """(model, tokenizer, world) for one seed and world mode: the cached pretrained world model (:func:`base_model`;
    ``cfg``: any config with the base-model fields) and the world of that seed."""
    tok, model = base_model(cfg, seed, pretrain_steps)
    return model, tok, World(seed, mode=mode)


def stage_steps(epochs: int, n_prompts: int, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` passes over ``n_prompts`` prompts in batches of ``batch_size`` (a last partial
    batch does not count)."""
    return epochs * (n_prompts // min(batch_size, n_prompts))


def stage_config(task: str, steps: int, seed: int, optimizer: str, lr: float, pair_loss: dict | None = None):
    """The TrainConfig of one stage of the world experiments: constant ``lr``, no clipping, one log line, quiet.
    ``pair_loss``: the DPO loss (None: TrainConfig's default)."""
    extra = {} if pair_loss is None else {"pair_loss": pair_loss}
    return TrainConfig(task=task, steps=steps, optimizer=optimizer, lr=lr, grad_clip=0.0, seed=seed,
                       log_every=max(1, steps), progress=False, **extra)


def lower_lr(e: TrainingDiverged, lr: float, also: str = "") -> str:
    """The advice for a stage that diverged: lower --lr (now ``lr``)``also``; when no update had been taken, the
    learning rate is not the cause, and the advice says so."""
    if e.updates == 0:
        return "the loss was not finite before any update, so the learning rate is not the cause"
    return f"lower --lr (now {lr:g}){also}"


def sft_stage(model, tok, examples: list[Example], tc: TrainConfig, batch_size: int, tracker=None):
    """A copy of ``model`` after ``tc.steps`` SFT steps on ``examples`` (prompt masked, summed log-prob) in batches
    of ``batch_size``, data order seeded by ``tc.seed``; ``tracker``: the Trainer's callback."""
    model = copy.deepcopy(model)
    if tc.steps == 0:
        return model
    data = PairData(tok, examples, batch_size, model.config.block_size, tc.seed)
    try:
        Trainer(model, data, tc, tok).run(tracker)
    except TrainingDiverged as e:
        raise TrainingDiverged(f"SFT (seed {tc.seed}) diverged: {lower_lr(e, tc.lr)} ({e.fact})", e.fact,
                               e.updates) from None
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# measurements and figures
# --------------------------------------------------------------------------------------------------------------


def regime(model, tok, probes: ProbeSet, world: World | None) -> dict:
    """Where the base model starts (train split): log π(y⁺) per response and per token, the fraction of training
    prompts answered correctly, the fraction of y⁺ positions where y* ≠ y⁺, and valley depth."""
    train = probes.split("train")
    prompts, chosen = [p.prompt for p in train], [p.responses["chosen"] for p in train]
    b = make_batch(tok, prompts, chosen, model.config.block_size).to(next(model.parameters()).device)
    with torch.no_grad():
        logits = model.eval()(b.idx)  # (B, T, V)
    st = position_stats(logits, b.targets)
    mask = b.mask  # (B, T) the positions of y⁺
    differ = ((logits.argmax(-1) != b.targets) & mask).sum().item() / mask.sum().item()
    answers = [p.responses.get("init", "") for p in train]
    exact = sum(a == c for a, c in zip(answers, chosen)) / len(train)
    res = {"logp_chosen": st["logp"].mean().item(), "logp_chosen_per_token": (st["logp"].sum() /
                                                                              st["tokens"].sum()).item(),
           "answered_exactly": exact, "ystar_differs": differ, "valley_depth": valley_depth(model, tok)}
    if world is not None:
        items = world.train_items()
        res["answered_fact_correctly"] = sum(world.classify(it, a) == "correct" for it, a in
                                             zip(items, answers)) / len(items)
    return res


def figure(runs: list[dict], path: Path, title: str) -> Path:
    """The paper's Fig. 3 layout: one panel per family, mean over prompts; line = mean over seeds, band = min…max
    over seeds; training prompts solid, held-out prompts dashed."""
    from tinyld.plots import panels

    fams = list(runs[0]["curves"]["train"])
    x = [s / runs[0]["steps_per_epoch"] for s in runs[0]["measured_steps"]]
    data = {}
    for f in fams:
        sym = FAMILIES.get(f, f)
        data[f if sym.replace(" ", "_") == f else f"{f} ({sym})"] = {
            split: [[r["curves"][split][f][i] for r in runs] for i in range(len(x))]
            for split in ("train", "test") if all(f in r["curves"][split] and r["curves"][split][f] for r in runs)}
    return panels(x, data, path, title, xlabel="epoch", ylabel="log π(y|x)")
