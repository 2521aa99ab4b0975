"""The base models that lessons and experiments start from, pretrained once and cached.

The paper finetunes a pretrained model; here the "pretrained model" is made on the spot, from the synthetic world's
text, by one of two recipes:

- :data:`TINY_RECIPE`: the tiny preset with the world's word-level tokenizer (the demo's first stage; about a
  minute on two CPU cores for 3000 steps);
- :data:`GPT2_RECIPE`: GPT-2 small (124M) with the GPT-2 BPE, from a random init or a local Hugging Face GPT-2
  folder (nanoGPT's GPT-2 settings with short windows).

:func:`pretrained` returns (world, tokenizer, model) and caches the model as a checkpoint whose name holds
everything its weights depend on (task, seed, recipe, torch version, a hash of the code that trains it), so a
second call is instant and a cache made by other code is never reused.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tinyld.checkpoints import load_model, save_checkpoint
from tinyld.data import TextStream
from tinyld.distributed import dist_info
from tinyld.model import GPT, GPTConfig
from tinyld.reasoning import Arithmetic
from tinyld.runtime import TinyldError, TrainingDiverged, check_choice, check_int, check_seed, num_threads, pick_device
from tinyld.tokenizers import GPT2BPE
from tinyld.train import TrainConfig, Trainer
from tinyld.world import World


@dataclass(frozen=True)
class TinyRecipe:
    """How the tiny base model is pretrained: AdamW with 50 warm-up steps and cosine decay; long and hot, so the
    model ends confident, with deep valleys."""

    seed: int = 0  # the world, the init and the data order
    preset: str = "tiny"  # model shape (GPTConfig presets); the vocabulary comes from the world's tokenizer
    pretrain_steps: int = 3000  # next-token steps on the world's text (~55 s for tiny on 2 cores)
    pretrain_lr: float = 2e-2  # peak AdamW learning rate
    batch_size: int = 16  # windows of block_size tokens per step
    threads: int = 2  # CPU threads. Pinned: float sums, and so a 3000-step model, depend on the thread count


TINY_RECIPE = TinyRecipe()


def pretrain(world: World, tok, cfg: TinyRecipe, device, out: Path | None = None) -> tuple[GPT, list[dict]]:
    """A tiny GPT pretrained on ``world.pretrain_docs()`` (the paper's "base model"). ``cfg`` is a
    :class:`TinyRecipe` or anything with its fields (the demo passes its DemoConfig)."""
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig.preset(cfg.preset, vocab_size=tok.vocab_size)).to(device)
    data = TextStream(tok, world.pretrain_docs(), model.config.block_size, cfg.batch_size, seed=cfg.seed)
    tc = TrainConfig(task="pretrain", steps=cfg.pretrain_steps, lr=cfg.pretrain_lr, warmup_steps=50,
                     schedule="cosine", seed=cfg.seed, log_every=50, out_dir=str(out) if out else None)
    try:
        hist = Trainer(model, data, tc, tok).run(overwrite=True)  # the demo always starts over
    except TrainingDiverged as e:
        raise TrainingDiverged(f"pretraining diverged (lower --pretrain-lr, now {cfg.pretrain_lr:g}): {e}") from None
    return model.eval(), hist


# GPT-2 size on the world's text (GPT-2 BPE, ~4.7k tokens): nanoGPT's GPT-2 settings with short windows. The text
# is tiny, so a thousand steps are hundreds of passes over it: the model becomes confident and its valleys deep.
GPT2_RECIPE = dict(steps=1000, lr=3e-4, warmup_steps=50, schedule="cosine", weight_decay=0.1, grad_clip=1.0,
                   batch_size=8, block_size=256)


def pretrained(seed: int = 0, steps: int = 3000, cache: str | Path | None = "tinyld_out/cache", task: str = "world",
               preset: str | None = None, hf: str | Path | None = None, device: str = "cpu"):
    """(world, tokenizer, pretrained GPT) for lessons and experiments; cached as a checkpoint so a second call is
    instant. ``task`` is ``world`` (people and facts) or ``arithmetic`` (the word problems of
    :mod:`tinyld.reasoning`).

    ``preset="gpt2"`` pretrains GPT-2 small (124M, GPT-2 BPE) on the world's text with :data:`GPT2_RECIPE` (AdamW,
    ``steps`` updates) on ``device``, with the fast path on a GPU; ``hf`` starts that recipe from a local Hugging
    Face GPT-2 folder (:meth:`GPT.from_hf`) instead of a random init. The model returned is on the CPU, plain path."""
    check_seed("seed", seed)
    check_int("steps", steps, 1)
    check_choice("pretrained task", task, ("world", "arithmetic"))
    if cache is not None and not isinstance(cache, (str, os.PathLike)):
        raise TinyldError(f"cache must be a folder path or None, got {type(cache).__name__}")
    if hf is not None:
        if not isinstance(hf, (str, os.PathLike)) or not str(hf).strip() or not Path(hf).is_dir():
            raise TinyldError(f"hf={hf!r} is not a folder: give a local Hugging Face GPT-2 folder (config.json + "
                              "model.safetensors or pytorch_model.bin)")
        if preset == "tiny":
            raise TinyldError("a Hugging Face GPT-2 folder is GPT-2 with the GPT-2 BPE: use preset 'gpt2' (or none) "
                              "with hf, not 'tiny'")
    preset = preset if preset is not None else ("gpt2" if hf is not None else "tiny")
    check_choice("pretrained preset", preset, ("tiny", "gpt2"))
    if preset == "gpt2" and task != "world":
        raise TinyldError("the gpt2 preset is pretrained on the world's text only (task='world')")
    world = World(seed) if task == "world" else Arithmetic(seed)
    dev = pick_device(device).device
    if preset == "gpt2":
        tok = GPT2BPE()
        shape = GPTConfig.preset("gpt2").to_dict()
        origin = "random" if hf is None else _hf_digest(Path(hf))
        key = f"{task}-{seed}-gpt2-{origin}-{steps}-{dev.type}-shape{_digest(json.dumps(shape, sort_keys=True))}"
    else:
        tok = world.tokenizer()
        key = f"{task}-{seed}-tiny-{steps}-t{TINY_RECIPE.threads}"
    # The key names everything the weights depend on: a cache made by other code or threads is never reused.
    key += f"-torch{torch.__version__.split('+')[0]}-code{_code_digest()}"
    path = Path(cache) / f"{key}.pt" if cache else None
    if path and path.is_file():
        try:
            model, _, _ = load_model(path)
            return world, tok, model.eval()
        except TinyldError as e:  # derived data: rebuild it
            print(f"[tinyld] the cached model {path} is unreadable ({e}); pretraining it again")
    if preset == "gpt2":
        model = _pretrain_gpt2(world, tok, seed, steps, hf, dev)
    else:
        recipe = replace(TINY_RECIPE, seed=seed, pretrain_steps=steps)
        with num_threads(recipe.threads):  # the demo's thread count, so that both train the same model
            model, _ = pretrain(world, tok, recipe, torch.device("cpu"))
    if path:
        rank, n = dist_info()
        if rank == 0:
            save_checkpoint(path, model, tok, step=steps)
        if n > 1:  # under torchrun: no rank may look for the file before it is there
            torch.distributed.barrier()
    return world, tok, model


def _pretrain_gpt2(world: World, tok, seed: int, steps: int, hf, device: torch.device) -> GPT:
    """GPT-2 small on the world's text with GPT2_RECIPE; on a GPU with fused attention, bf16 and torch.compile."""
    torch.manual_seed(seed)
    model = GPT.from_hf(hf) if hf is not None else GPT(GPTConfig.preset("gpt2"))
    if model.config.vocab_size != tok.vocab_size:
        raise TinyldError(f"the model in {hf} has vocab_size {model.config.vocab_size}, the GPT-2 BPE has "
                          f"{tok.vocab_size}: give a GPT-2 folder")
    r = GPT2_RECIPE
    if model.config.block_size < 128:  # the hard world's prompt + answer is up to about 60 BPE tokens
        where = f"the model in {hf}" if hf is not None else "the gpt2 preset"
        raise TinyldError(f"{where} has a context of {model.config.block_size} tokens (n_positions); the world's "
                          "prompts and answers need at least 128")
    block = min(r["block_size"], model.config.block_size)
    model = model.to(device).use_fast(True)
    data = TextStream(tok, world.pretrain_docs(), block, r["batch_size"], seed=seed)
    tc = TrainConfig(task="pretrain", steps=steps, lr=r["lr"], warmup_steps=r["warmup_steps"],
                     schedule=r["schedule"], weight_decay=r["weight_decay"], grad_clip=r["grad_clip"], seed=seed,
                     log_every=max(1, steps // 10))
    print(f"[tinyld] pretraining a GPT-2 ({'from ' + str(hf) if hf else 'random init'}) on the world's text: "
          f"{steps} steps of {r['batch_size']}×{block} tokens, AdamW lr {r['lr']:g}, on {device}")
    t = time.perf_counter()
    try:
        hist = Trainer(model, data, tc, tok, compile=True).run()
    except TrainingDiverged as e:
        raise TrainingDiverged(f"GPT-2 pretraining diverged: {e}") from None
    print(f"[tinyld] loss {hist[0]['loss']:.3f} → {hist[-1]['loss']:.4f} in {time.perf_counter() - t:.1f} s")
    return model.use_fast(False).cpu().eval()


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _hf_digest(folder: Path) -> str:
    """Which Hugging Face folder: its config and the size and time of its weights files."""
    parts = [(folder / "config.json").read_text(encoding="utf-8") if (folder / "config.json").is_file() else ""]
    for name in ("model.safetensors", "pytorch_model.bin"):
        f = folder / name
        if f.is_file():
            st = f.stat()
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return "hf" + _digest("|".join(parts))


def _code_digest() -> str:
    """A short hash of the modules a pretrained model depends on."""
    here = Path(__file__).parent
    h = hashlib.sha1()
    for name in ("model.py", "data.py", "losses.py", "train.py", "distributed.py", "world.py", "tokenizers.py",
                 "pretrained.py", "reasoning.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:8]
