"""On-policy data for RL with verifiable rewards: :class:`RLData` samples a group of responses to each question from
the policy being trained, grades them, and hands the Trainer an :class:`~tinyld.rl.RLBatch` (task ``"grpo"``).

At step s (with ``inner_steps`` k: at the first step of each block of k) it

1. takes the next ``per_step`` questions of an order shuffled once per pass (seeded by the data seed and the pass);
2. samples ``group`` responses to each from the policy (temperature ``temperature``, up to ``max_new_tokens``, cut
   after the first EOS), from a generator seeded by (seed, block): the samples are a pure function of the weights
   and the step, so a run resumed from a checkpoint at a block's first step samples exactly what the uninterrupted
   run sampled;
3. grades each (``grade(question index, text)`` → a finite number, 1/0 for a verifiable answer), and computes the
   group-relative advantages of the loss (:meth:`tinyld.rl.GRPOLoss.advantages`);
4. records log π_old of every sampled token (the policy that sampled it) and, with a KL term, log π_ref; ``last``
   keeps the block's questions, texts, rewards, flat groups and the samples' mean log π per token.

The k steps of a block train on the same samples (PPO-style inner steps; the clipped ratio then matters). A
checkpoint inside a block cannot be resumed exactly (the samples came from weights it does not hold): resuming
there is refused, with the step to resume from instead.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable, Sequence

import torch

from tinyld.data import Batch, collate, digest, seeded_generator
from tinyld.rl import GRPOLoss, RLBatch, check_rewards, flat_groups, grpo_loss
from tinyld.runtime import TinyldError, check_int, check_number, check_seed
from tinyld.tokenizers import fingerprint


class RLData:
    """Questions, a grader and the sampling recipe; :meth:`bind` gives it the policy (the Trainer does)."""

    def __init__(self, tok, questions: Sequence[str], grade: Callable[[int, str], float], group: int = 4,
                 per_step: int = 4, loss: "str | GRPOLoss" = "grpo", seed: int = 0, max_new_tokens: int = 24,
                 temperature: float = 1.0, reference=None, inner_steps: int = 1, block_size: int | None = None):
        questions = list(questions) if questions is not None and not isinstance(questions, str) else None
        if not questions or not all(isinstance(q, str) and q for q in questions):
            raise TinyldError("RLData needs a list of questions (non-empty prompt strings)")
        if not callable(grade):
            raise TinyldError(f"RLData needs a grader grade(question index, text) -> number, got "
                              f"{type(grade).__name__}")
        if isinstance(group, bool) or not isinstance(group, int) or group < 2:
            raise TinyldError(f"RLData group must be an integer ≥ 2 (a group-relative advantage needs at least two "
                              f"samples per question), got {group!r}")
        self.group = group
        self.per_step = check_int("RLData per_step", per_step, 1, len(questions))
        self.spec = grpo_loss(loss)
        if self.spec.name == "dr_grpo" and self.spec.max_len is None:  # TRL's constant: the longest answer allowed,
            # the same for every step and every torchrun rank's share
            self.spec = grpo_loss("dr_grpo", clip=self.spec.clip, kl=self.spec.kl,
                                  max_len=check_int("RLData max_new_tokens", max_new_tokens, 1))
        self.seed = check_seed("RLData seed", seed)
        self.max_new_tokens = check_int("RLData max_new_tokens", max_new_tokens, 1)
        self.temperature = float(check_number("RLData temperature", temperature, 0, strict=True))
        self.inner_steps = check_int("RLData inner_steps", inner_steps, 1)
        if self.spec.kl and reference is None:
            raise TinyldError(f"a KL term (kl {self.spec.kl:g}) needs a reference model: RLData(..., reference=model)")
        self.tok, self.questions, self.grade, self.reference = tok, questions, grade, reference
        self.ids = [tok.encode(q) for q in questions]
        self.block_size, self.fp = block_size, fingerprint(tok)
        self.policy, self._cache, self.last = None, (None, None), {}

    @property
    def batch_size(self) -> int:
        return self.per_step * self.group

    def identity(self) -> dict:
        """What a checkpoint remembers about this data, so a resume can check it is the same."""
        return {"kind": "rl", "tokenizer": self.fp, "questions": digest(self.ids), "group": self.group,
                "per_step": self.per_step, "seed": self.seed, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "inner_steps": self.inner_steps, "loss": asdict(self.spec),
                "block_size": self.block_size}

    def bind(self, model) -> None:
        """The policy to sample from: the model being trained."""
        self.policy = model

    def questions_at(self, block: int) -> list[int]:
        """Which questions (indices) the samples of ``block`` answer."""
        per_pass = len(self.questions) // self.per_step
        epoch, i = divmod(block, per_pass)
        order = torch.randperm(len(self.questions), generator=seeded_generator(self.seed, epoch)).tolist()
        return order[i * self.per_step:(i + 1) * self.per_step]

    def batch(self, step: int) -> RLBatch:
        block, at = divmod(step, self.inner_steps)
        if self._cache[0] == block:
            return self._cache[1]
        if at:
            raise TinyldError(f"step {step} is inside a block of {self.inner_steps} inner steps whose samples came "
                              f"from the weights at step {block * self.inner_steps}: resume from a checkpoint at "
                              "a block's first step (save every multiple of inner_steps)")
        if self.policy is None:
            raise TinyldError("RLData has no policy to sample from: give it to a Trainer (or call bind(model))")
        batch = self.sample(block)
        self._cache = (block, batch)
        return batch

    @torch.no_grad()
    def sample(self, block: int) -> RLBatch:
        """Sample, grade and score the groups of ``block`` (see the module docstring)."""
        model, dev = self.policy, next(self.policy.parameters()).device
        qs = self.questions_at(block)
        g = torch.Generator(device=dev).manual_seed(self.seed * 1_000_003 + block)
        was_training = model.training
        model.eval()
        responses = self._generate(model, [self.ids[q] for q in qs], g)  # per question: G lists of token ids
        texts = [[self.tok.decode([t for t in r if t != self.tok.eos_id]).strip() for r in rs] for rs in responses]
        rewards = check_rewards([[float(self.grade(q, t)) for t in ts] for q, ts in zip(qs, texts)])
        adv = self.spec.advantages(rewards).reshape(-1)  # (Q·G,)
        seqs = [(self.ids[q] + r, len(self.ids[q])) for q, rs in zip(qs, responses) for r in rs]
        b = collate(seqs, self.tok.pad_id, self.block_size, self.fp).to(dev)
        old = self._token_logps(model, b)
        ref = None if not self.spec.kl else self._token_logps(self.reference, b)
        model.train(was_training)
        self.last = {"block": block, "questions": qs, "texts": texts, "rewards": rewards.tolist(),
                     "flat_groups": flat_groups(rewards), "logp_per_token": (old.sum() / b.mask.sum()).item()}
        return RLBatch(b, adv.to(dev), old, ref, rewards.reshape(-1).to(dev))

    def _generate(self, model, prompts: list[list[int]], g) -> list[list[list[int]]]:
        """``group`` samples per prompt, cut after the first EOS (which they keep); prompts of one length together."""
        out: list[list[list[int]]] = [[] for _ in prompts]
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        for n, members in sorted(by_len.items()):
            x = torch.tensor([prompts[i] for i in members for _ in range(self.group)], device=g.device)
            ys = model.generate(x, self.max_new_tokens, temperature=self.temperature, eos_id=self.tok.eos_id,
                                generator=g)[:, n:].tolist()
            for k, y in enumerate(ys):
                out[members[k // self.group]].append(y[:y.index(self.tok.eos_id) + 1] if self.tok.eos_id in y else y)
        return out

    @staticmethod
    def _token_logps(model, b: Batch) -> torch.Tensor:
        """log π(y_t) at every scored position of ``b`` (0 elsewhere): (B, T)."""
        model.eval()
        lp = torch.zeros(b.idx.shape, dtype=torch.float64, device=b.idx.device)
        z = model(b.idx)[b.mask].double()  # (N_tok, V): the scored positions only
        lp[b.mask] = torch.log_softmax(z, -1).gather(-1, b.targets[b.mask][:, None])[:, 0]
        return lp
