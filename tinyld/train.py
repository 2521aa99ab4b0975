"""The training loop: pretraining and SFT with SGD / AdamW / RMSprop, warm-up, clipping, checkpoints, resume.

Notable choices
- The batch at step s is a pure function of (data seed, s) and the learning rate a pure function of s, so a run
  resumed from a checkpoint at step s reproduces the uninterrupted run **exactly** on the CPU.
- Checkpoints are written atomically (temp file + rename): a crash or a NaN never destroys the last good one.
- A NaN/inf loss or gradient stops the run *before* the bad update, naming the step and the last good checkpoint.
- Logs are JSON lines (one per ``log_every`` steps); a progress line goes to stderr on long runs.
- ``callback(trainer, step)`` runs after every update: probe tracking in later lessons hooks in there.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from tinyld.losses import LOSSES
from tinyld.model import GPT, GPTConfig
from tinyld.runtime import TinyldError, TrainingDiverged, from_dict_strict, versions

FORMAT = "tinyld-checkpoint"
FORMAT_VERSION = 1
OPTIMIZERS = ("sgd", "adamw", "rmsprop")


@dataclass
class TrainConfig:
    task: str = "pretrain"  # "pretrain": next token, mean over tokens · "sft": prompt masked, summed response log-prob
    steps: int = 1000  # total optimizer steps (a resumed run continues up to this number)
    optimizer: str = "adamw"  # sgd | adamw | rmsprop
    lr: float = 3e-3  # peak learning rate η
    warmup_steps: int = 0  # linear warm-up from 0 to lr over this many steps
    schedule: str = "constant"  # after warm-up: "constant" or "cosine" (to 10% of lr at the last step)
    weight_decay: float = 0.0  # decoupled (AdamW) or L2 (SGD, RMSprop)
    momentum: float = 0.0  # SGD / RMSprop momentum
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = no clipping)
    seed: int = 0  # seeds the initial RNG state (data order is seeded by the data source)
    log_every: int = 10  # one JSON line per this many steps
    ckpt_every: int = 0  # save out_dir/last.pt every this many steps (0: only at the end)
    out_dir: str | None = None  # where log.jsonl and last.pt go (None: nothing written)
    progress: bool = True  # a progress line on stderr for runs of ≥ 200 steps

    def __post_init__(self):
        if self.task not in LOSSES:
            raise TinyldError(f"unknown task {self.task!r}: choose one of {', '.join(LOSSES)}")
        if self.optimizer not in OPTIMIZERS:
            raise TinyldError(f"unknown optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in ("constant", "cosine"):
            raise TinyldError(f"unknown schedule {self.schedule!r}: choose constant or cosine")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise TinyldError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.steps < 0 or self.warmup_steps < 0:
            raise TinyldError(f"steps and warmup_steps must be ≥ 0, got {self.steps}, {self.warmup_steps}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return from_dict_strict(cls, d)

    def lr_at(self, step: int) -> float:
        """Learning rate for the update taken at ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            span = max(1, self.steps - self.warmup_steps)
            frac = min(1.0, (step - self.warmup_steps) / span)
            return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        return self.lr


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class Trainer:
    """Owns a model, a data source (``.batch(step)``), an optimizer and the step counter."""

    def __init__(self, model: GPT, data, cfg: TrainConfig, tokenizer=None):
        self.model, self.data, self.cfg, self.tokenizer = model, data, cfg, tokenizer
        self.opt = make_optimizer(model, cfg)
        self.loss_fn = LOSSES[cfg.task]
        self.step = 0
        self.history: list[dict] = []  # the logged records
        self.device = next(model.parameters()).device
        self.last_ckpt: Path | None = None
        self._between_steps = True  # False while an update is half-taken: no checkpoint may be written then
        torch.manual_seed(cfg.seed)

    # ------------------------------------------------------------------ one update
    def train_step(self) -> dict:
        """One update at ``self.step``; returns ``{"step", "loss", "lr", "grad_norm"}`` (loss before the update)."""
        cfg, model = self.cfg, self.model
        self._between_steps = False  # an interrupt from here on would leave a half-taken step
        model.train()
        batch = self.data.batch(self.step).to(self.device)
        lr = cfg.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        fast = model.config.fast and self.device.type == "cuda"
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if fast else contextlib.nullcontext()
        with ctx:
            logits = model(batch.idx)  # (B, T, V)
        loss = self.loss_fn(logits, batch.targets)  # bf16 logits are upcast inside (losses.token_logprobs)
        if not torch.isfinite(loss):
            self._diverged("loss", loss.item())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if not torch.isfinite(grad_norm):
            self._diverged("gradient norm", grad_norm.item())
        self.opt.step()
        rec = {"step": self.step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item()}
        self.step += 1
        self._between_steps = True
        return rec

    def _diverged(self, what: str, value: float):
        where = (f"the last good checkpoint is {self.last_ckpt} (step {self._ckpt_step})" if self.last_ckpt
                 else "no checkpoint was saved yet (set ckpt_every and out_dir to keep one)")
        raise TrainingDiverged(f"{what} became {value} at step {self.step}; training stopped before that update. "
                               f"{where}. Lower lr (now {self.cfg.lr_at(self.step):g}) or grad_clip, then resume.")

    # ------------------------------------------------------------------ the loop
    def run(self, callback: Callable[["Trainer", int], None] | None = None) -> list[dict]:
        cfg = self.cfg
        out = Path(cfg.out_dir) if cfg.out_dir else None
        if out:
            out.mkdir(parents=True, exist_ok=True)
            self._log(out, {"event": "start", "step": self.step, "train_config": asdict(cfg),
                            "model_config": self.model.config.to_dict(), "versions": versions()})
        show = cfg.progress and cfg.steps - self.step >= 200
        t0, first = time.perf_counter(), self.step
        try:
            while self.step < cfg.steps:
                rec = self.train_step()
                if callback:
                    callback(self, self.step)
                if rec["step"] % cfg.log_every == 0 or self.step == cfg.steps:
                    rec["elapsed_s"] = round(time.perf_counter() - t0, 3)
                    self.history.append(rec)
                    if out:
                        self._log(out, rec)
                if show and (self.step % max(1, cfg.steps // 20) == 0 or self.step == cfg.steps):
                    rate = (self.step - first) / max(1e-9, time.perf_counter() - t0)
                    tty = sys.stderr.isatty()
                    print(("\r" if tty else "") + f"  step {self.step:>6}/{cfg.steps}  loss {rec['loss']:.4f}  "
                          f"{rate:6.0f} steps/s", end="\n" if self.step == cfg.steps or not tty else "",
                          file=sys.stderr, flush=True)
                if out and cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save(out / "last.pt")
        except KeyboardInterrupt:
            if out and self._between_steps:  # a clean state: save it
                self.save(out / "last.pt")
            if self.last_ckpt:
                print(f"\ninterrupted at step {self.step}; resume from step {self._ckpt_step} with "
                      f"Trainer.resume('{self.last_ckpt}', data)", file=sys.stderr)
            raise
        if out:
            self.save(out / "last.pt")
        return self.history

    @staticmethod
    def _log(out: Path, rec: dict) -> None:
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """Write config, tokenizer identity, step, model + optimizer state, RNG state and format version."""
        path = Path(path)
        save_checkpoint(path, self.model, self.tokenizer, step=self.step, train_config=asdict(self.cfg),
                        optimizer=self.opt.state_dict())
        self.last_ckpt, self._ckpt_step = path, self.step
        return path

    @classmethod
    def resume(cls, path: str | Path, data, tokenizer=None, **overrides) -> "Trainer":
        """Rebuild model, optimizer and step from a checkpoint; ``overrides`` change TrainConfig fields
        (e.g. ``steps`` to train longer)."""
        ck = load_checkpoint(path)
        model = model_from_checkpoint(ck)
        if tokenizer is not None and tokenizer.identity() != ck["tokenizer"]:
            raise TinyldError(f"{path} was trained with tokenizer {ck['tokenizer'].get('kind')!r} "
                              f"(vocab {ck['tokenizer'].get('vocab_size')}), not the one given: use the same one")
        cfg = TrainConfig.from_dict({**ck["train_config"], **overrides})
        tr = cls(model, data, cfg, tokenizer)
        tr.opt.load_state_dict(ck["optimizer"])
        tr.step = ck["step"]
        torch.set_rng_state(ck["rng"])
        tr.last_ckpt, tr._ckpt_step = Path(path), ck["step"]
        return tr


def save_checkpoint(path: str | Path, model: GPT, tokenizer=None, step: int = 0, train_config: dict | None = None,
                    optimizer: dict | None = None, **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ck = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": model.config.to_dict(),
          "tokenizer": tokenizer.identity() if tokenizer is not None else None, "step": step,
          "train_config": train_config, "model": model.state_dict(), "optimizer": optimizer,
          "rng": torch.get_rng_state(), "versions": versions(), **extra}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ck, tmp)
    os.replace(tmp, path)  # atomic: the old file stays whole until the new one is complete
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Read and validate a checkpoint; every failure is one clear TinyldError."""
    path = Path(path)
    if not path.is_file():
        raise TinyldError(f"no checkpoint at {path}: check the path (training writes out_dir/last.pt)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only: no code runs
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise TinyldError(f"{path} holds Python objects other than tensors and plain data; tinyld never "
                              "unpickles code from a checkpoint (torch.load weights_only=True)") from None
        raise TinyldError(f"checkpoint {path} is truncated or corrupt (UnpicklingError); "
                          "use an earlier checkpoint or retrain") from None
    except Exception as e:
        raise TinyldError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}); "
                          "use an earlier checkpoint or retrain") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise TinyldError(f"{path} is not a tinyld checkpoint (no '{FORMAT}' marker); "
                          "for Hugging Face GPT-2 folders use GPT.from_hf")
    if ck.get("format_version") != FORMAT_VERSION:
        raise TinyldError(f"{path} has checkpoint format version {ck.get('format_version')}, this tinyld reads "
                          f"version {FORMAT_VERSION}: use the tinyld version that wrote it")
    return ck


def model_from_checkpoint(ck: dict | str | Path) -> GPT:
    if not isinstance(ck, dict):
        ck = load_checkpoint(ck)
    sd = ck["model"]
    model = GPT(GPTConfig.from_dict(ck["model_config"])).to(next(iter(sd.values())).dtype)  # keep float64 models
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatch
        missing, unexpected = [str(e).splitlines()[-1].strip()], []
    if missing or unexpected:
        raise TinyldError(f"checkpoint weights do not fit its config (missing/mismatched {missing[:3]}, unexpected "
                          f"{unexpected[:3]}): the file is incompatible with this tinyld")
    return model


def load_model(path: str | Path):
    """(model, tokenizer, checkpoint dict) from a tinyld checkpoint."""
    from tinyld.tokenizers import tokenizer_from_identity

    ck = load_checkpoint(path)
    model = model_from_checkpoint(ck)
    tok = tokenizer_from_identity(ck["tokenizer"]) if ck.get("tokenizer") else None
    return model, tok, ck
