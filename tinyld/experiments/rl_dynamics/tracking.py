"""rl-dynamics, one RL run (a seed, a loss) and what it measures: the probes fixed at the start, their log π through
RL, y* and the mass split at the incorrect samples' positions, the entropy with its first-order prediction, the
halves of the steps that move the correct samples, the rewards, lengths and log π of the fresh samples trained on,
pass@k."""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, replace
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from tinyld.choose import load_real, model_choice
from tinyld.data import IGNORE, Example, make_batch
from tinyld.dynamics import sequence_change
from tinyld.evaluate import sampled_answers
from tinyld.experiments.forecasting.config import MAX_NEW
from tinyld.experiments.forecasting.sweep import finetune
from tinyld.experiments.rl_dynamics.config import RLDynamicsConfig
from tinyld.kernel import predict
from tinyld.pretrained import pretrained
from tinyld.probes import position_stats
from tinyld.reasoning import N_FORMS, Arithmetic, Problem
from tinyld.rl import grpo_loss, unbiased_pass_at_k
from tinyld.rl_data import RLData
from tinyld.runtime import pick_device
from tinyld.squeeze import MASS_CLASSES, token_mass
from tinyld.train import TrainConfig, Trainer
from tinyld.updates import GRPOUpdate, lm_rows

FAMILIES = ("correct", "incorrect", "reference", "rewrite")  # the fixed sequences whose log π is tracked


@dataclass(frozen=True)
class Task:
    """The word problems as the run's model reads them: ``world`` (the task), ``tok``, whether prompts are chat
    turns (a real LLM: the question as the user turn of its chat template; the tiny model: the task's own prompt)
    and ``max_new``, the tokens a sampled answer may take (the longest written form, EOS and 7 more)."""

    world: Arithmetic
    tok: object
    chat: bool
    max_new: int

    def prompt(self, p: Problem) -> str:
        return self.tok.chat([{"role": "user", "content": p.question()}]) if self.chat else p.prompt()

    def train_examples(self, problems: list[Problem]) -> list[Example]:
        """The SFT data: the task's written solutions, each with the prompt this model reads."""
        return [replace(e, prompt=self.prompt(p)) for p, e in zip(problems, self.world.train_examples(problems))]


def sft_model(cfg: RLDynamicsConfig, seed: int) -> tuple[Task, object]:
    """(task, SFT model), the starting point of RL: SFT on the first ``sft_data`` questions of the pool (AdamW,
    cosine to 10% of ``sft_lr``, batch 8, no clipping) from the forecasting task's base model (tiny) or from the
    real LLM as it is, whose answers must first take the task's written form for the grader to read them."""
    dev = pick_device(cfg.device).device
    if cfg.real:
        base, tok = load_real(model_choice(cfg.model, "rl-dynamics"))
        base = base.to(dev)
        world = Arithmetic(seed)
        longest = max(len(tok.encode(p.solution(f))) for p in world.pool() + world.test_problems()
                      for f in range(N_FORMS))  # every question of the task: no setting changes the cap
        task = Task(world, tok, True, longest + 1 + 7)
    else:
        world, tok, base = pretrained(seed, steps=cfg.pretrain_steps, task="arithmetic", device=cfg.device)
        base = base.to(dev)
        task = Task(world, tok, False, MAX_NEW)  # MAX_NEW: the longest written form (18 tokens), EOS and 7 more
    train = world.pool()[:cfg.sft_data]
    model, _ = finetune(SimpleNamespace(batch_size=8), seed, base, tok, task, train, cfg.sft_lr, cfg.sft_epochs)
    return task, model.eval()


def fixed_probes(cfg: RLDynamicsConfig, task: Task, model, seed: int) -> dict:
    """Drawn once from the SFT model: ``fixed_samples`` samples per probe question, split by the grader into correct
    and incorrect; the reference solutions (the SFT data's written form) and a rewrite of each (the other step
    order). Each family as (prompts, responses)."""
    world = task.world
    probs = world.pool()[:cfg.probes]
    prompts = [task.prompt(p) for p in probs]
    answers = sampled_answers(model, task.tok, prompts, cfg.fixed_samples, seed * 7919 + 1, cfg.temperature,
                              task.max_new)
    fam = {k: ([], []) for k in FAMILIES}
    for p, x, ans in zip(probs, prompts, answers):
        for a in ans:
            if a:
                fam["correct" if world.grade(p, a) else "incorrect"][0].append(x)
                fam["correct" if world.grade(p, a) else "incorrect"][1].append(a)
        form = world.form_of(p)  # the written form the SFT data gave this question (train_examples)
        fam["reference"][0].append(x), fam["reference"][1].append(p.solution(form))
        fam["rewrite"][0].append(x), fam["rewrite"][1].append(p.solution((form + N_FORMS // 2) % N_FORMS))
    return fam


@torch.no_grad()
def measure(model, tok, fam: dict) -> dict:
    """log π (summed and per token) of each family; at the incorrect samples' positions y*'s log π and the mass
    split (own token, argmax, rest); the mean entropy per token over every fixed sample's positions."""
    model.eval()
    out = {}
    for k, (xs, ys) in fam.items():
        if not xs:
            out[k] = None
            continue
        b = make_batch(tok, xs, ys, model.config.block_size).to(_device(model))
        logits = model(b.idx)
        st = position_stats(logits, b.targets)
        out[k] = {"logp": st["logp"].tolist(), "per_token": (st["logp"] / st["tokens"]).tolist()}
        if k == "incorrect":
            mass = token_mass(logits, b.targets, torch.full_like(b.targets, IGNORE))  # (B, T, 4)
            m = (mass.sum((0, 1)) / b.mask.sum()).tolist()
            out[k].update(star=st["logp_star"].tolist(), mass=dict(zip(MASS_CLASSES, m)))
    xs = fam["correct"][0] + fam["incorrect"][0]
    ys = fam["correct"][1] + fam["incorrect"][1]
    out["entropy"] = entropy_per_token(model, make_batch(tok, xs, ys, model.config.block_size).to(_device(model))) \
        if xs else None
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


def entropy_per_token(model, b) -> float:
    lp = F.log_softmax(model(b.idx)[b.mask].double(), -1)  # (N, V)
    return (-(lp.exp() * lp).sum(-1)).mean().item()


def entropy_check(model, before: dict, tok, fam: dict) -> dict:
    """The update from the parameters ``before`` to the model's: the actual change of the mean entropy per token
    over the fixed samples' positions against its first-order prediction, −Σ_v π_v log π_v Δlog π_v with
    Δlog π = A·J·Δθ (one JVP along the real update)."""
    xs, ys = fam["correct"][0] + fam["incorrect"][0], fam["correct"][1] + fam["incorrect"][1]
    b = make_batch(tok, xs, ys, model.config.block_size).to(_device(model))
    now = {k: v.detach() for k, v in model.named_parameters()}
    delta = {k: now[k] - before[k] for k in now}
    with torch.no_grad():
        z0, dz = jvp(lambda p: functional_call(model, p, (b.idx,))[b.mask], (before,), (delta,))
        lp0 = F.log_softmax(z0.double(), -1)
        pi = lp0.exp()
        dlogp = dz.double() - (pi * dz.double()).sum(-1, keepdim=True)  # A·J·Δθ
        predicted = (-(pi * lp0 * dlogp).sum(-1)).mean().item()
        h0 = (-(pi * lp0).sum(-1)).mean().item()
        actual = entropy_per_token(model, b) - h0
    return {"predicted": predicted, "actual": actual}


def halves_now(model, data: RLData, step: int, tok, fam: dict) -> dict | None:
    """For the samples the step ``step`` trains on: the predicted change (per unit lr, a plain-SGD step of the run's
    loss; the run itself takes AdamW steps) of each fixed correct sample's log π due to the positive-advantage
    samples and due to the negative ones, each with its share of the batch's 1/N. The prediction is linear in the
    residual, so without a KL term the two add up to the whole step's (with one, the samples of flat groups, Â = 0,
    carry only its pull and are in neither half); each half is one backward pass and one JVP."""
    if not fam["correct"][0]:
        return None
    b = data.batch(step)
    obs = lm_rows(make_batch(tok, *fam["correct"], model.config.block_size).to(_device(model)))
    out = {}
    for half, sel in (("positive", b.adv > 0), ("negative", b.adv < 0)):
        if not bool(sel.any()):
            out[half] = [0.0] * len(fam["correct"][0])
            continue
        part = b.rows(sel)
        mask = part.seqs.mask
        update = GRPOUpdate(lm_rows(part.seqs), part.adv, part.old[mask], None if part.ref is None else
                            part.ref[mask], loss=data.spec, weight=int(sel.sum()) / len(b.adv))  # its share of 1/N
        out[half] = sequence_change(obs, predict(model, obs, update, 1.0)).tolist()
    return out


def pass_at_k(cfg: RLDynamicsConfig, model, task: Task, seed: int) -> dict:
    """pass@k for k = 1 … passk_n on the first ``test_questions`` held-out questions (the unbiased estimator from
    ``passk_n`` samples each), and the mean length in words of correct and incorrect samples."""
    world = task.world
    probs = world.test_problems()[:cfg.test_questions]
    answers = sampled_answers(model, task.tok, [task.prompt(p) for p in probs], cfg.passk_n, seed, cfg.temperature,
                              task.max_new)
    correct = [[world.grade(p, a) for a in ans] for p, ans in zip(probs, answers)]
    ks = range(1, cfg.passk_n + 1)
    lengths = {v: [len(a.split()) for ans, c in zip(answers, correct) for a, ok in zip(ans, c) if ok == v]
               for v in (True, False)}
    return {"k": list(ks), "pass": [statistics.fmean(unbiased_pass_at_k(cfg.passk_n, sum(c), k) for c in correct)
                                    for k in ks],
            "length_correct": statistics.fmean(lengths[True]) if lengths[True] else None,
            "length_incorrect": statistics.fmean(lengths[False]) if lengths[False] else None}


def rl_run(cfg: RLDynamicsConfig, seed: int, loss: str, sft, task: Task, fam: dict | None) -> dict:
    """RL from a copy of the SFT model with ``loss``; measured every ``measure_every`` steps (and at the end).
    ``fam`` None: train only (under torchrun, the ranks other than 0 share every step and measure nothing)."""
    t0 = time.perf_counter()
    model = copy.deepcopy(sft)
    world, tok = task.world, task.tok
    probs = world.pool()[:cfg.sft_data]
    data = RLData(tok, [task.prompt(p) for p in probs], lambda k, text: float(world.grade(probs[k], text)),
                  group=cfg.group, per_step=cfg.per_step, loss=grpo_loss(loss, clip=cfg.clip, kl=cfg.kl), seed=seed,
                  max_new_tokens=task.max_new, temperature=cfg.temperature, inner_steps=cfg.inner_steps,
                  block_size=model.config.block_size, reference=copy.deepcopy(sft).eval() if cfg.kl else None)
    data.bind(model)  # the Trainer binds it too; the first measurement already asks for step 0's samples
    tc = TrainConfig(task="grpo", steps=cfg.steps, optimizer=cfg.optimizer, lr=cfg.lr, grad_clip=0.0, seed=seed,
                     log_every=1, progress=False)
    if fam is None:
        Trainer(model, data, tc, tok).run()
        return {}
    points = [{"step": 0, **measure(model, tok, fam), "halves": halves_now(model, data, 0, tok, fam)}]
    rewards, lengths, checks = [], [], []
    before = {k: v.detach().clone() for k, v in model.named_parameters()}

    def callback(trainer, step):
        nonlocal before
        last = data.last
        flat = [r for g in last["rewards"] for r in g]
        words = [(len(t.split()), r) for ts, rs in zip(last["texts"], last["rewards"]) for t, r in zip(ts, rs)]
        rewards.append({"step": step, "mean": statistics.fmean(flat), "flat_groups": last["flat_groups"],
                        "fresh_logp_per_token": last["logp_per_token"]})  # the samples drawn for this step
        lengths.append({"step": step, **{k: statistics.fmean([n for n, r in words if (r > 0) == v]) if any(
            (r > 0) == v for _, r in words) else None for k, v in (("correct", True), ("incorrect", False))}})
        if (step - 1) % cfg.measure_every == 0:  # the update just taken, checked at first order
            checks.append({"step": step - 1, **entropy_check(trainer.model, before, tok, fam)})
        if step % cfg.measure_every == 0 or step == cfg.steps:
            points.append({"step": step, **measure(trainer.model, tok, fam),
                           "halves": halves_now(trainer.model, data, step, tok, fam) if step < cfg.steps else None})
        if step % cfg.measure_every == 0:
            before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        trainer.model.train()
    Trainer(model, data, tc, tok).run(callback)
    return {"loss": loss, "points": points, "rewards": rewards, "lengths": lengths, "entropy_checks": checks,
            "pass_at_k": pass_at_k(cfg, model.eval(), task, seed * 7919 + 2),
            "seconds": round(time.perf_counter() - t0, 1)}
