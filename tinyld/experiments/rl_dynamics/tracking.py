"""rl-dynamics, one RL run (a seed, a loss) and what it measures: the probes fixed at the start, their log π through
RL, y* and the mass split at the incorrect samples' positions, the entropy with its first-order prediction, the
halves of the steps that move the correct samples, the rewards, lengths and log π of the fresh samples trained on,
pass@k."""
from __future__ import annotations

import copy
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from tinyld.data import IGNORE, make_batch
from tinyld.dynamics import contributions
from tinyld.evaluate import sampled_answers
from tinyld.experiments.forecasting.config import MAX_NEW
from tinyld.experiments.forecasting.sweep import finetune
from tinyld.experiments.rl_dynamics.config import RLDynamicsConfig
from tinyld.pretrained import pretrained
from tinyld.probes import position_stats
from tinyld.reasoning import N_FORMS, Arithmetic
from tinyld.rl import grpo_loss, unbiased_pass_at_k
from tinyld.rl_data import RLData
from tinyld.squeeze import MASS_CLASSES, token_mass
from tinyld.train import TrainConfig, Trainer
from tinyld.updates import GRPOUpdate, lm_rows

FAMILIES = ("correct", "incorrect", "reference", "rewrite")  # the fixed sequences whose log π is tracked


def sft_model(cfg: RLDynamicsConfig, seed: int):
    """(task, tokenizer, SFT model): the forecasting task's base model, SFT on the first ``sft_data`` questions of
    the pool (AdamW, cosine to 10% of ``sft_lr``, batch 8, no clipping) — the starting point of RL."""
    world, tok, base = pretrained(seed, steps=cfg.pretrain_steps, task="arithmetic")
    train = world.pool()[:cfg.sft_data]
    model, _ = finetune(SimpleNamespace(batch_size=8), seed, base, tok, world, train, cfg.sft_lr, cfg.sft_epochs)
    return world, tok, model.eval()


def fixed_probes(cfg: RLDynamicsConfig, world: Arithmetic, tok, model, seed: int) -> dict:
    """Drawn once from the SFT model: ``fixed_samples`` samples per probe question, split by the grader into correct
    and incorrect; the reference solutions (the SFT data's written form) and a rewrite of each (the other step
    order). Each family as (prompts, responses)."""
    probs = world.pool()[:cfg.probes]
    prompts = [p.prompt() for p in probs]
    answers = sampled_answers(model, tok, prompts, cfg.fixed_samples, seed * 7919 + 1, cfg.temperature, MAX_NEW)
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
        b = make_batch(tok, xs, ys, model.config.block_size)
        logits = model(b.idx)
        st = position_stats(logits, b.targets)
        out[k] = {"logp": st["logp"].tolist(), "per_token": (st["logp"] / st["tokens"]).tolist()}
        if k == "incorrect":
            mass = token_mass(logits, b.targets, torch.full_like(b.targets, IGNORE))  # (B, T, 4)
            m = (mass.sum((0, 1)) / b.mask.sum()).tolist()
            out[k].update(star=st["logp_star"].tolist(), mass=dict(zip(MASS_CLASSES, m)))
    xs = fam["correct"][0] + fam["incorrect"][0]
    ys = fam["correct"][1] + fam["incorrect"][1]
    out["entropy"] = entropy_per_token(model, make_batch(tok, xs, ys, model.config.block_size)) if xs else None
    return out


def entropy_per_token(model, b) -> float:
    lp = F.log_softmax(model(b.idx)[b.mask].double(), -1)  # (N, V)
    return (-(lp.exp() * lp).sum(-1)).mean().item()


def entropy_check(model, before: dict, tok, fam: dict) -> dict:
    """The update from the parameters ``before`` to the model's: the actual change of the mean entropy per token
    over the fixed samples' positions against its first-order prediction, −Σ_v π_v log π_v Δlog π_v with
    Δlog π = A·J·Δθ (one JVP along the real update)."""
    xs, ys = fam["correct"][0] + fam["incorrect"][0], fam["correct"][1] + fam["incorrect"][1]
    b = make_batch(tok, xs, ys, model.config.block_size)
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
    samples and due to the negative ones (their sum is the whole step's prediction)."""
    if not fam["correct"][0]:
        return None
    b = data.batch(step)
    if not bool((b.adv != 0).any()):
        return {"positive": [0.0] * len(fam["correct"][0]), "negative": [0.0] * len(fam["correct"][0])}
    obs = lm_rows(make_batch(tok, *fam["correct"], model.config.block_size))
    parts = contributions(model, GRPOUpdate(lm_rows(b.seqs), b.adv, loss=data.spec), obs, 1.0)  # (samples, correct)
    pos, neg = b.adv > 0, b.adv < 0
    return {"positive": parts[pos].sum(0).tolist(), "negative": parts[neg].sum(0).tolist()}


def pass_at_k(cfg: RLDynamicsConfig, model, tok, world: Arithmetic, seed: int) -> dict:
    """pass@k for k = 1 … passk_n on the first ``test_questions`` held-out questions (the unbiased estimator from
    ``passk_n`` samples each), and the mean length in words of correct and incorrect samples."""
    probs = world.test_problems()[:cfg.test_questions]
    answers = sampled_answers(model, tok, [p.prompt() for p in probs], cfg.passk_n, seed, cfg.temperature, MAX_NEW)
    correct = [[world.grade(p, a) for a in ans] for p, ans in zip(probs, answers)]
    ks = range(1, cfg.passk_n + 1)
    lengths = {v: [len(a.split()) for ans, c in zip(answers, correct) for a, ok in zip(ans, c) if ok == v]
               for v in (True, False)}
    return {"k": list(ks), "pass": [statistics.fmean(unbiased_pass_at_k(cfg.passk_n, sum(c), k) for c in correct)
                                    for k in ks],
            "length_correct": statistics.fmean(lengths[True]) if lengths[True] else None,
            "length_incorrect": statistics.fmean(lengths[False]) if lengths[False] else None}


def rl_run(cfg: RLDynamicsConfig, seed: int, loss: str, sft, tok, world: Arithmetic, fam: dict) -> dict:
    """RL from a copy of the SFT model with ``loss``; measured every ``measure_every`` steps (and at the end)."""
    t0 = time.perf_counter()
    model = copy.deepcopy(sft)
    probs = world.pool()[:cfg.sft_data]
    data = RLData(tok, [p.prompt() for p in probs], lambda k, text: float(world.grade(probs[k], text)),
                  group=cfg.group, per_step=cfg.per_step, loss=grpo_loss(loss, clip=cfg.clip, kl=cfg.kl), seed=seed,
                  max_new_tokens=MAX_NEW, temperature=cfg.temperature, inner_steps=cfg.inner_steps,
                  block_size=model.config.block_size, reference=copy.deepcopy(sft).eval() if cfg.kl else None)
    data.bind(model)  # the Trainer binds it too; the first measurement already asks for step 0's samples
    tc = TrainConfig(task="grpo", steps=cfg.steps, optimizer=cfg.optimizer, lr=cfg.lr, grad_clip=0.0, seed=seed,
                     log_every=1, progress=False)
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
            "pass_at_k": pass_at_k(cfg, model.eval(), tok, world, seed * 7919 + 2),
            "seconds": round(time.perf_counter() - t0, 1)}
