"""The training loop: pretraining, SFT and DPO with SGD / AdamW / RMSprop, warm-up, clipping, checkpoints, resume.

Notable choices
- The batch at step s is a pure function of (data seed, s) and the learning rate a pure function of s, so a run
  resumed from a checkpoint at step s reproduces the uninterrupted run **exactly** on the CPU.
- A checkpoint only ever holds finite weights whose logits are finite. It is written atomically (a temp file +
  rename), so a crash, a full disk or a diverged update never destroys the last good one.
- A NaN/inf loss or gradient stops the run *before* the bad update. An update that makes the weights non-finite
  stops the run *after* it, and nothing is saved from then on. The next step's loss checks each update; the last
  update is checked by the logits it gives on the next batch. Every such error names the step and the last good
  checkpoint.
- Ctrl-C during a step lets the step finish, saves a checkpoint at that step boundary and then stops (a second
  Ctrl-C stops at once). Only one run at a time may write to an ``out_dir`` (a lock file says which).
- Resuming checks that the data, the tokenizer and the optimizer are the ones the checkpoint was trained with.
- Logs are JSON lines (one per ``log_every`` steps); a progress line goes to stderr on long runs.
- ``callback(trainer, step)`` runs after every update: hook your own measurements in there.

Reading order: :class:`TrainConfig`, then :meth:`Trainer.train_step` (one update) and :meth:`Trainer.run` (the loop).
Checkpoint files and the folder lock live in :mod:`tinyld.checkpoints`; torchrun's share of a batch in
:mod:`tinyld.distributed`.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from tinyld.checkpoints import (FolderLock, append_log, check_resumable, data_identity, load_checkpoint,
                                model_from_checkpoint, save_checkpoint)
from tinyld.data import Batch
from tinyld.distributed import dist_info, shard
from tinyld.losses import LOSSES, pair_loss, sequence_logprob
from tinyld.model import GPT
from tinyld.preference import PrefBatch
from tinyld.rl import RLBatch
from tinyld.runtime import (TinyldError, TrainingDiverged, TrainingInterrupted, check_choice, check_int, check_number,
                            check_seed, first_nonfinite, from_dict_strict, versions, writable_dir)
from tinyld.tokenizers import fingerprint

OPTIMIZERS = ("sgd", "adamw", "rmsprop")
TASKS = (*LOSSES, "dpo", "grpo")
DATA_KIND = {"dpo": "preference", "grpo": "rl"}  # the data source each task trains on (the others: text, pairs)
ADDED_LATER = {"pair_loss"}  # TrainConfig fields newer than some checkpoints: their defaults reproduce the old runs


@dataclass
class TrainConfig:
    task: str = "pretrain"  # "pretrain": next token, mean over tokens · "sft": prompt masked, summed response log-prob
    #                          · "dpo": a preference loss on PreferenceData pairs (``pair_loss`` says which)
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
    pair_loss: dict = field(default_factory=lambda: {"name": "sigmoid", "beta": 0.1})  # task "dpo": losses.PairLoss

    def __post_init__(self):
        check_choice("TrainConfig.task", self.task, TASKS)
        if not isinstance(self.pair_loss, dict) or not all(isinstance(k, str) for k in self.pair_loss):
            raise TinyldError(f"TrainConfig.pair_loss must be a dict like {{'name': 'sigmoid', 'beta': 0.1}}, got "
                              f"{self.pair_loss!r}")
        # checked, and stored in full with plain floats: a checkpoint then says exactly which loss it trained
        self.pair_loss = asdict(pair_loss(**{"name": "sigmoid", **self.pair_loss}))
        self.steps = check_int("TrainConfig.steps", self.steps, 0)
        check_choice("TrainConfig.optimizer", self.optimizer, OPTIMIZERS)
        self.lr = check_number("TrainConfig.lr", self.lr, 0, strict=True)
        self.warmup_steps = check_int("TrainConfig.warmup_steps", self.warmup_steps, 0)
        check_choice("TrainConfig.schedule", self.schedule, ("constant", "cosine"))
        self.weight_decay = check_number("TrainConfig.weight_decay", self.weight_decay, 0)
        self.momentum = check_number("TrainConfig.momentum", self.momentum, 0, 1, hi_open=True)
        self.grad_clip = check_number("TrainConfig.grad_clip", self.grad_clip, 0)
        self.seed = check_seed("TrainConfig.seed", self.seed)
        self.log_every = check_int("TrainConfig.log_every", self.log_every, 1)
        self.ckpt_every = check_int("TrainConfig.ckpt_every", self.ckpt_every, 0)
        if self.out_dir is not None and not (isinstance(self.out_dir, (str, os.PathLike)) and str(self.out_dir)):
            raise TinyldError(f"TrainConfig.out_dir must be a folder path or None, got {self.out_dir!r}")
        if self.out_dir is not None:
            self.out_dir = str(self.out_dir)
        if not isinstance(self.progress, bool):
            raise TinyldError(f"TrainConfig.progress must be True or False, got {self.progress!r}")

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

    def __init__(self, model: GPT, data, cfg: TrainConfig, tokenizer=None, compile: bool = False):
        if not isinstance(model, torch.nn.Module) or not hasattr(getattr(model, "config", None), "to_dict"):
            raise TinyldError(f"Trainer needs a tinyld GPT (a model with a GPTConfig), got {type(model).__name__}")
        if not callable(getattr(data, "batch", None)):
            raise TinyldError(f"Trainer needs a data source with a .batch(step) method (TextStream, PairData), "
                              f"got {type(data).__name__}")
        if not isinstance(cfg, TrainConfig):
            raise TinyldError(f"Trainer needs a TrainConfig, got {type(cfg).__name__}")
        if not any(p.requires_grad for p in model.parameters()):
            raise TinyldError("the model has no trainable parameters (every requires_grad is False)")
        if tokenizer is not None:
            if not all(hasattr(tokenizer, a) for a in ("identity", "vocab_size", "name", "encode", "decode")):
                raise TinyldError(f"tokenizer must be a tinyld tokenizer (WordTokenizer, GPT2BPE) or None, got "
                                  f"{type(tokenizer).__name__}")
            if tokenizer.vocab_size != model.config.vocab_size:
                raise TinyldError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                                  f"{model.config.vocab_size}: build the model with vocab_size=tokenizer.vocab_size")
            made_with = (data_identity(data) or {}).get("tokenizer")
            if made_with is not None and made_with != fingerprint(tokenizer):
                raise TinyldError(f"the data was encoded with tokenizer {made_with}, not with the one given "
                                  f"({fingerprint(tokenizer)}): a checkpoint would pair the model with the wrong "
                                  "vocabulary; pass the tokenizer that built the data")
        self.model, self.data, self.cfg, self.tokenizer = model, data, cfg, tokenizer
        self.rank, self.world = dist_info()
        if not isinstance(compile, bool):
            raise TinyldError(f"Trainer(compile=...) takes True or False, got {compile!r}")
        dev = next(model.parameters()).device
        # The fast path on a GPU: fused attention (the model's own switch), bf16 autocast (train_step) and, for long
        # runs of one shape, torch.compile (its first step compiles: tens of seconds at GPT-2 size).
        self.fast = getattr(model.config, "fast", False) and dev.type == "cuda"
        self.net = torch.compile(model) if compile and self.fast else model  # what the forward pass runs
        if self.world > 1:
            size = getattr(data, "batch_size", None)
            if not isinstance(size, int) or size % self.world:
                raise TinyldError(f"{self.world} processes share each step's batch, so the batch size must be a "
                                  f"multiple of {self.world}, got {size}")
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[dev.index] if dev.type == "cuda" else None)  # rank 0's weights, on every rank
        self.opt = make_optimizer(model, cfg)
        kind = (data_identity(data) or {}).get("kind")
        if kind is not None and DATA_KIND.get(cfg.task) != (kind if kind in DATA_KIND.values() else None):
            raise TinyldError(f"task {cfg.task!r} cannot train on {type(data).__name__}: task 'dpo' takes "
                              "PreferenceData, 'grpo' RLData, 'sft' PairData and 'pretrain' a TextStream")
        if callable(getattr(data, "bind", None)):
            data.bind(model)  # on-policy data samples from the model being trained
        if cfg.task == "dpo":
            self.pair_loss = pair_loss(**cfg.pair_loss)
            if self.pair_loss.uses_reference and getattr(data, "reference", None) is None:
                raise TinyldError(f"the {self.pair_loss.name!r} loss compares with a reference: give the data a "
                                  "reference (PreferenceData(..., reference=Reference.compute(ref_model, tok, "
                                  "examples))); only 'simpo' needs none")
        elif cfg.task != "grpo":
            self.loss_fn = LOSSES[cfg.task]
        self.step = 0
        self.history: list[dict] = []  # the logged records
        self.device = dev
        self.last_ckpt: Path | None = None
        self._ckpt_step: int | None = None
        self._between_steps = True  # False while an update is half-taken: no checkpoint may be written then
        self._first = 0  # the step the current run() started at: updates before a divergence are counted from it
        self._stop_requested = False  # set by Ctrl-C: finish this step, save, stop
        torch.manual_seed(cfg.seed)

    # ------------------------------------------------------------------ one update
    def train_step(self) -> dict:
        """One update at ``self.step``; returns ``{"step", "loss", "lr", "grad_norm"}`` (loss before the update)."""
        cfg, model = self.cfg, self.model
        model.train()
        batch = self.data.batch(self.step)  # the global batch; each rank keeps its shard
        want = {"dpo": PrefBatch, "grpo": RLBatch}.get(cfg.task, Batch)
        if not isinstance(batch, want):
            raise TinyldError(f"data.batch({self.step}) returned a {type(batch).__name__}, not a tinyld "
                              f"{want.__name__}" + (f" (task {cfg.task!r} trains on {DATA_KIND[cfg.task]} data)"
                                                    if cfg.task in DATA_KIND else ""))
        batch = shard(batch, self.rank, self.world).to(self.device)
        lr = cfg.lr_at(self.step)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.fast else contextlib.nullcontext()
        seqs = batch.seqs if cfg.task in DATA_KIND else batch
        with ctx:
            logits = self.net(seqs.idx)  # (B, T, V); for DPO (2B, T, V): the chosen rows, then the rejected ones
        if cfg.task == "dpo":
            loss = self._pair_loss(logits, batch)
        elif cfg.task == "grpo":
            loss = batch.loss(self.data.spec, logits)  # the RL loss of the sampled groups (tinyld.rl)
        else:
            loss = self.loss_fn(logits, batch.targets)  # bf16 logits are upcast inside (losses.token_logprobs)
        seen = loss.detach().clone()
        if self.world > 1:  # the global batch's loss, the same number on every rank
            torch.distributed.all_reduce(seen)
            seen /= self.world
        if not torch.isfinite(seen):
            self._diverged("the loss", seen.item(), before=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if not torch.isfinite(grad_norm):
            self._diverged("the gradient norm", grad_norm.item(), before=True)
        # Until now nothing that a checkpoint holds has changed: an interrupt above leaves a clean state.
        self._between_steps = False
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        bad = first_nonfinite(model)
        if bad:
            self._diverged(f"parameter {bad!r}", "NaN or inf", before=False)
        rec = {"step": self.step, "loss": seen.item(), "lr": lr, "grad_norm": grad_norm.item()}
        self.step += 1
        self._between_steps = True
        return rec

    def _pair_loss(self, logits: torch.Tensor, batch: PrefBatch) -> torch.Tensor:
        """The preference loss of a PrefBatch from the logits of its 2B sequences (one forward pass)."""
        B = batch.n_pairs
        logp = sequence_logprob(logits, batch.seqs.targets)  # (2B,) summed over each response
        n = batch.seqs.mask.sum(1).to(logp.dtype)  # (2B,) response lengths
        rc, rr = batch.ref_c.to(logp.dtype), batch.ref_r.to(logp.dtype)
        return self.pair_loss.value(logp[:B], logp[B:], rc, rr, n[:B], n[B:])

    def _where(self) -> str:
        if self.last_ckpt:
            return f"The last good checkpoint is {self.last_ckpt} (step {self._ckpt_step})"
        if self.cfg.out_dir and self.cfg.ckpt_every:
            return "No good checkpoint was saved before this"
        return "No checkpoint was saved (set out_dir and ckpt_every to keep one)"

    def _diverged(self, what: str, value, before: bool):
        when = ("training stopped before that update" if before else
                "the update was taken, so the model in memory is unusable and nothing more is saved")
        self._between_steps = before  # a model with bad weights is never checkpointed
        updates = self.step - self._first + (not before)
        fact = f"{what} became {value} at step {self.step}"
        advice = (f"Lower lr (now {self.cfg.lr_at(self.step):g}) or grad_clip, then resume" if updates else
                  "No update had been taken, so the learning rate is not the cause: check the loss's settings "
                  "(for DPO, β) and the data")
        raise TrainingDiverged(f"{fact}; {when}. {self._where()}. {advice}.", fact, updates)

    # ------------------------------------------------------------------ the loop
    def run(self, callback: Callable[["Trainer", int], None] | None = None, overwrite: bool = False) -> list[dict]:
        """Train up to ``cfg.steps``. An ``out_dir`` that already holds another run's checkpoint is refused unless
        ``overwrite`` (this trainer resumed from it, or saved it itself, is fine)."""
        cfg = self.cfg
        if callback is not None and not callable(callback):
            raise TinyldError(f"callback must be a function (trainer, step), got {type(callback).__name__}")
        writes = cfg.out_dir and self.rank == 0  # under torchrun only rank 0 logs and saves
        out = writable_dir(cfg.out_dir, "TrainConfig.out_dir") if writes else None
        if out and (out / "last.pt").is_dir():
            raise TinyldError(f"{out / 'last.pt'} is a folder: the checkpoint goes there; remove or rename it")
        with FolderLock(out), self._defer_interrupts():
            if out and (out / "last.pt").exists() and not overwrite and not self._owns(out / "last.pt"):
                raise TinyldError(f"{out / 'last.pt'} holds a checkpoint of another run: continue it with "
                                  f"Trainer.resume('{out / 'last.pt'}', data, tokenizer), choose another out_dir, "
                                  "or pass run(overwrite=True) to replace it")
            if out and self.step == 0 and (out / "log.jsonl").exists():
                (out / "log.jsonl").unlink()  # a fresh run starts a fresh log
            if out:
                append_log(out, {"event": "start", "step": self.step, "train_config": asdict(cfg),
                                "model_config": self.model.config.to_dict(), "versions": versions()})
            show = cfg.progress and cfg.steps - self.step >= 200 and self.rank == 0
            t0, first = time.perf_counter(), self.step
            self._first = first
            try:
                while self.step < cfg.steps:
                    rec = self.train_step()
                    if callback:
                        callback(self, self.step)
                    if rec["step"] % cfg.log_every == 0 or self.step == cfg.steps:
                        rec["elapsed_s"] = round(time.perf_counter() - t0, 3)
                        self.history.append(rec)
                        if out:
                            append_log(out, rec)
                    if show and (self.step % max(1, cfg.steps // 20) == 0 or self.step == cfg.steps):
                        rate = (self.step - first) / max(1e-9, time.perf_counter() - t0)
                        tty = sys.stderr.isatty()
                        print(("\r" if tty else "") + f"  step {self.step:>6}/{cfg.steps}  loss {rec['loss']:.4f}  "
                              f"{rate:6.0f} steps/s", end="\n" if self.step == cfg.steps or not tty else "",
                              file=sys.stderr, flush=True)
                    if out and cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                        self.save(out / "last.pt")
                    if self._stop_requested:
                        raise KeyboardInterrupt
            except KeyboardInterrupt:
                self._on_interrupt(out)
            if self.step > first and (bad := self.not_finite()):  # each update is checked by the next; the last
                self._between_steps = False  # by this: a model with bad weights is never checkpointed
                fact = f"{bad} are not finite after the last update (step {self.step - 1})"
                raise TrainingDiverged(f"{fact}, so the model in memory is unusable and nothing more is saved. "
                                       f"{self._where()}. Lower lr (now {cfg.lr_at(self.step - 1):g}) or grad_clip, "
                                       "then resume.", fact, self.step - first)
            if out and (self.last_ckpt, self._ckpt_step) != (out / "last.pt", self.step):  # not saved just now
                self.save(out / "last.pt")
        return self.history

    def not_finite(self) -> str | None:
        """What is not finite in the model as it stands: its weights, or the logits they give on the next batch (the
        one the next step would train on); None when both are finite."""
        bad = first_nonfinite(self.model)
        if bad:
            return f"the weights of {bad!r}"
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            b = self.data.batch(self.step)
            b = b.seqs if isinstance(b, (PrefBatch, RLBatch)) else b  # preference or RL data: its sequences
            logits = self.model(b.idx.to(self.device))  # (B, T, V)
        self.model.train(was)
        return None if bool(torch.isfinite(logits).all()) else "the logits the weights give on the next batch"

    def _owns(self, path: Path) -> bool:
        try:
            return self.last_ckpt is not None and Path(self.last_ckpt).resolve() == path.resolve()
        except OSError:
            return False

    def _on_interrupt(self, out: Path | None):
        """Save at the step boundary if the state is clean, then stop with a message that says how to resume."""
        if out and self._between_steps and self._ckpt_step != self.step:
            try:
                self.save(out / "last.pt")
            except TinyldError as e:  # say why, keep the earlier checkpoint
                print(f"\ncould not save at step {self.step}: {e}", file=sys.stderr)
        if self.last_ckpt:
            msg = (f"interrupted at step {self.step}; the checkpoint {self.last_ckpt} holds step {self._ckpt_step}: "
                   f"continue with Trainer.resume('{self.last_ckpt}', data, tokenizer).run()")
        else:
            msg = f"interrupted at step {self.step}; nothing was saved (set out_dir to keep checkpoints)"
        raise TrainingInterrupted(msg, self.last_ckpt) from None

    @contextlib.contextmanager
    def _defer_interrupts(self):
        """Ctrl-C asks the loop to stop at the next step boundary; a second Ctrl-C stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            then = "saving and stopping" if self.cfg.out_dir and self.rank == 0 else "stopping"  # nothing to save
            print(f"\nCtrl-C: finishing step {self.step}, then {then} (Ctrl-C again to stop now)", file=sys.stderr,
                  flush=True)

        self._stop_requested = False  # before the handler: a Ctrl-C pending from just now must not be lost
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # whoever started us chose to ignore Ctrl-C
            yield
            return
        try:
            old = signal.signal(signal.SIGINT, handler)
        except (ValueError, OSError):  # no signals here (an embedded interpreter): plain KeyboardInterrupt
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)
        if self._stop_requested:  # Ctrl-C after the last step boundary: the run is complete and saved; stop anyway
            where = f"; {self.last_ckpt} holds step {self._ckpt_step}" if self.last_ckpt else ""
            raise TrainingInterrupted(f"interrupted after the last step ({self.step}){where}", self.last_ckpt)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path) -> Path:
        """Write config, tokenizer and data identity, step, model + optimizer state, RNG state and format version.

        Refuses (TrainingDiverged) when the weights, or the logits they give on the next batch, are not finite:
        the previous checkpoint then stays the last good one."""
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise TinyldError(f"save() needs a file path, got {path!r}")
        if not self._between_steps:
            raise TinyldError("an update is half-taken: a checkpoint can only be written between steps")
        bad = self.not_finite()
        if bad:
            raise TrainingDiverged(f"not saving step {self.step} to {path}: {bad} are not finite. {self._where()}. "
                                   "Lower lr or grad_clip and resume from there.")
        path = Path(path)
        save_checkpoint(path, self.model, self.tokenizer, step=self.step, train_config=asdict(self.cfg),
                        optimizer=self.opt.state_dict(), data=data_identity(self.data))
        self.last_ckpt, self._ckpt_step = path, self.step
        return path

    @classmethod
    def resume(cls, path: str | Path, data, tokenizer=None, **overrides) -> "Trainer":
        """Rebuild model, optimizer and step from a checkpoint; ``overrides`` change TrainConfig fields
        (e.g. ``steps`` to train longer). The data, tokenizer and optimizer must match the checkpoint's."""
        ck = load_checkpoint(path)
        check_resumable(path, ck, tokenizer, data_identity(data))
        model = model_from_checkpoint(ck)
        old_opt = ck["train_config"].get("optimizer")
        if "optimizer" in overrides and overrides["optimizer"] != old_opt:
            raise TinyldError(f"{path} holds {old_opt} optimizer state; it cannot resume as "
                              f"{overrides['optimizer']!r}: start a new Trainer from load_model() instead")
        stored = ck["train_config"]
        if "pair_loss" in overrides and isinstance(overrides["pair_loss"], dict) and isinstance(
                stored.get("pair_loss"), dict):
            overrides["pair_loss"] = {**stored["pair_loss"], **overrides["pair_loss"]}  # change β, keep the rest
            if overrides["pair_loss"].get("name") != stored["pair_loss"].get("name"):
                raise TinyldError(f"{path} was trained with the {stored['pair_loss'].get('name')!r} loss; it cannot "
                                  "resume with another one: start a new Trainer from load_model() instead")
        lacking = sorted({f.name for f in fields(TrainConfig)} - set(stored) - ADDED_LATER)
        if lacking:
            raise TinyldError(f"the train_config in {path} lacks {lacking}: resuming would silently use defaults; "
                              "the file is incomplete or from another tinyld")
        cfg = TrainConfig.from_dict({**stored, **overrides})
        tr = cls(model, data, cfg, tokenizer)
        try:
            tr.opt.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError, RuntimeError, TypeError, AttributeError) as e:
            raise TinyldError(f"the optimizer state in {path} does not fit the model ({type(e).__name__}): the "
                              "file is incompatible with this tinyld") from None
        for g in tr.opt.param_groups:  # load_state_dict brings back the old hyper-parameters: apply the config
            g["weight_decay"] = cfg.weight_decay
            if "momentum" in g:
                g["momentum"] = cfg.momentum
        tr.step = check_int(f"step stored in {path}", ck["step"], 0)
        torch.set_rng_state(ck["rng"])
        tr.last_ckpt, tr._ckpt_step = Path(path), ck["step"]
        return tr
