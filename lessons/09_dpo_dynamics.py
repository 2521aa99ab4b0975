# %% [markdown]
# # Lesson 9 — What off-policy DPO does to every answer
#
# Lesson 8 showed the squeezing effect in one softmax: a negative step on a label that sits in a valley takes
# mass from almost every label and gives it to the peak. Here the same thing happens in a language model, over a
# whole DPO run. The recipe is the usual one: SFT on y⁺, then DPO on the world's pairs (x, y⁺, y⁻), with the SFT
# model as the reference. The probe tracker of lesson 6 follows every family of responses. The paper's Fig. 4
# claims, for off-policy DPO (lessons/NOTES.md §3):
#
# - y⁻ (y_u⁻, the rejected answer of the training prompt) falls, and faster than anything else;
# - y⁺ (y_u⁺) rises briefly, then declines;
# - almost every other response loses probability;
# - y*, the teacher-forced argmax along y⁺, rises: the mass is squeezed into the argmax;
# - after long DPO, greedy answers start to repeat themselves (the "repeater").
#
# We measure each claim per seed, see where the mass goes token by token (`tinyld.squeeze.token_mass`), and split
# one DPO step into its chosen and rejected halves with A·K·G to see which half moves each family.
#
# Fast mode (`TINYLD_FAST=1`) uses two seeds with 400-step base models, 2 SFT epochs and 4 DPO epochs; full mode
# 3000-step base models, 4 SFT and 8 DPO epochs, as `python -m tinyld dpo-dynamics --experiment dynamics` does.

# %%
import os

from tinyld.experiments.dpo_dynamics import (DPODynamicsConfig, base, claims_table, dpo, judge_dpo, mass_figure, sft,
                                             sft_steps, squeeze_summary)
from tinyld.experiments.sft_dynamics import figure, regime
from tinyld.probes import ProbeSet

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
SEEDS = [0, 1] if FAST else [0, 1, 2]  # fast mode: two seeds, to keep the test suite short
MODE = "hard"  # the paper's regime (lesson 6); try "easy"
cfg = DPODynamicsConfig(seeds=SEEDS, modes=[MODE], fast=FAST)
print(f"SFT then DPO ({cfg.loss}, β {cfg.beta:g}) with {cfg.optimizer}, lr {cfg.lr:g}, batch {cfg.batch_size}; "
      f"{cfg.sft_epochs} SFT + {cfg.dpo_epochs} DPO epochs; base models pretrained for {cfg.pretrain_steps} steps")

# %% [markdown]
# ## SFT, then DPO, with the tracker
# `base` loads the cached pretrained model, `sft` finetunes a copy on y⁺, and `dpo` runs DPO from it with the
# tracker measuring after every step of the first epoch and then once per epoch. `regime` says where DPO starts,
# including the valley depth (lessons/NOTES.md §5): report it beside every squeezing result.

# %%
runs, regimes, sft_models = [], [], []
for seed in SEEDS:
    model, tok, world = base(cfg, seed, MODE)
    items = world.train_items()
    model = sft(cfg, seed, model, tok, [it.example() for it in items], sft_steps(cfg, len(items)))
    probes = ProbeSet.from_world(world).with_init(model, tok)
    regimes.append(regime(model, tok, probes, world))
    runs.append(dpo(cfg, seed, model, tok, probes, world, dense=True))
    sft_models.append((model, tok, world, probes))
for seed, reg, r in zip(SEEDS, regimes, runs):
    s = squeeze_summary(r)
    print(f"seed {seed}: before DPO log π(y⁺) {reg['logp_chosen']:.1f}, valley {reg['valley_depth']:.1f} nats/token · "
          f"during DPO y⁻ {s['rejected']:+.1f}, y⁺ {s['chosen']:+.1f}, y* {s['star']:+.1f} nats, "
          f"{s['falling']}/{s['families']} families fall")

# %% [markdown]
# ## Fig. 4 for your model, and the claims table
# One panel per family, the mean over the 40 training prompts (solid) and the 40 held-out prompts (dashed); line:
# mean over seeds, band: the seeds' range. The x axis is in DPO epochs (the first epoch is measured after every step).

# %%
os.makedirs(OUT, exist_ok=True)
print("figure:", figure(runs, f"{OUT}/09_fig4_{MODE}.png", f"off-policy DPO, {MODE} world ({cfg.optimizer}, lr "
                        f"{cfg.lr:g}, β {cfg.beta:g})"))
claims = {c["claim"]: c for c in judge_dpo(runs)}
print(claims_table(list(claims.values()), f"claims, {MODE} world"))

# %% [markdown]
# ## Where the mass goes, token by token
# At every position of y⁺ (and of y⁻) the softmax splits four ways: the position's own token, the other
# response's token at the same position, the argmax (when it is neither), and the rest. `token_mass` returns that
# split; `dpo` records its mean over positions after every epoch. Squeezing is the argmax column growing while the
# others shrink.

# %%
# By hand once, at one position: the first position where y⁺ and y⁻ of the first training pair differ, under the
# SFT model of seed 0 (before DPO). π is one softmax; the four numbers are entries of it.
import torch  # noqa: E402

from tinyld.data import make_batch  # noqa: E402
from tinyld.squeeze import token_mass  # noqa: E402

m0, tok0, world0, _ = sft_models[0]
it = world0.train_items()[0]
b = make_batch(tok0, [it.prompt, it.prompt], [it.chosen, it.rejected], m0.config.block_size)
with torch.no_grad():
    z = m0.eval()(b.idx)  # (2, T, V): the chosen sequence, then the rejected one
t = b.targets  # (2, T)
pos = int(((t[0] != t[1]) & b.mask[0] & b.mask[1]).nonzero()[0])  # first position where the two tokens differ
pi = torch.softmax(z[0, pos].double(), -1)  # (V,) at that position of y⁺
own, other, top = int(t[0, pos]), int(t[1, pos]), int(pi.argmax())
by_hand = [pi[own].item(), pi[other].item(), pi[top].item() if top not in (own, other) else 0.0]
by_hand.append(1 - sum(by_hand))
lib = token_mass(z[:1], t[:1], t[1:])[0, pos].tolist()
print(f"position {pos} of y⁺: own {tok0.decode([own])!r}, other {tok0.decode([other])!r}, argmax "
      f"{tok0.decode([top])!r}; by hand {[round(x, 4) for x in by_hand]}, token_mass {[round(x, 4) for x in lib]}")
assert max(abs(a - c) for a, c in zip(by_hand, lib)) < 1e-9

print("figure:", mass_figure(runs, f"{OUT}/09_mass_{MODE}.png", f"where the mass goes during DPO, {MODE} world"))
for half in ("chosen", "rejected"):
    first = {k: sum(r["mass"][0][half][k] for r in runs) / len(runs) for k in runs[0]["mass"][0][half]}
    last = {k: sum(r["mass"][-1][half][k] for r in runs) / len(runs) for k in first}
    print(f"at the positions of {'y⁺' if half == 'chosen' else 'y⁻'}: " +
          ", ".join(f"{k} {first[k]:.3f} → {last[k]:.3f}" for k in first))

# %% [markdown]
# ## One DPO step, split into its halves
# G has two parts (lessons/NOTES.md §2): G⁺ = c(π − e_{y⁺})/B on the chosen sequences pulls y⁺ up, and
# G⁻ = −c(π − e_{y⁻})/B on the rejected ones pushes y⁻ down, with c = β(1 − a). On the common prefix of y⁺ and y⁻
# ("tina lives in") both halves see the same context and the same token, so there G⁺ = −G⁻ and they cancel
# exactly (lesson 4). The prediction −η·A·K·G is linear in G, so `halves` splits the predicted change of every
# observed response into the pull (where the answers differ), the push (there too) and the common prefix (0 for
# DPO). At the start of DPO the policy equals the reference, so a = 1/2 and c = β/2 for every pair. We observe a
# few families of the first training prompt under the SFT model of seed 0, for one plain-SGD step of size η.

# %%
import torch  # noqa: E402

from tinyld.data import make_batch  # noqa: E402
from tinyld.dynamics import halves, sequence_change  # noqa: E402
from tinyld.evaluate import response_logprobs  # noqa: E402
from tinyld.kernel import predict  # noqa: E402
from tinyld.updates import DPOUpdate, lm_rows  # noqa: E402

model, tok, world, probes = sft_models[0]
items = world.train_items()[:8]
prompts = [it.prompt for it in items]
chosen_b = make_batch(tok, prompts, [it.chosen for it in items], model.config.block_size)
rejected_b = make_batch(tok, prompts, [it.rejected for it in items], model.config.block_size)
ref_c = response_logprobs(model, tok, prompts, [it.chosen for it in items])
ref_r = response_logprobs(model, tok, prompts, [it.rejected for it in items])
update = DPOUpdate(lm_rows(chosen_b), lm_rows(rejected_b), ref_c, ref_r, beta=cfg.beta)
p = probes.probes[0]
fams = ["chosen", "rejected", "gpts_chosen", "other_chosen", "hum", "random_tokens"]
observed = lm_rows(make_batch(tok, [p.prompt] * len(fams), [p.responses[f] for f in fams], model.config.block_size))
eta = 1e-2
parts = halves(model, update, observed, eta)
whole = sequence_change(observed, predict(model, observed, update, eta))
print(f"{'family':14s} {'pull on y⁺':>11s} {'push on y⁻':>11s} {'prefix':>8s} {'sum':>9s}   "
      f"(predicted Δ log π, η = {eta:g})")
for k, f in enumerate(fams):
    print(f"{f:14s} {parts['chosen'][k].item():+11.4f} {parts['rejected'][k].item():+11.4f} "
          f"{parts['shared'][k].item():+8.4f} {whole[k].item():+9.4f}")
assert torch.allclose(parts["chosen"] + parts["rejected"] + parts["shared"], whole, atol=1e-5)  # linear in G
assert parts["shared"].abs().max() < 1e-3  # DPO: the common prefix cancels

# %% [markdown]
# Read the table row by row: which half moves each family, and which way? The numbers are the first-order
# prediction for one plain-SGD step of size η; read their signs and relative sizes. On our machine, in fast mode
# (400-step base models) the two halves were of the same order and often of opposite sign, so their sum was small
# (at this first step the push even raised this prompt's own y⁻ slightly, by +0.005: the curves sum many steps).
# In full mode (3000-step base models, deeper valleys) the push on y⁻ dominated: it lowered y⁻ by about 5.6, the
# fluent unrelated sentence by 4.3 and random words by 16.6 in these units, against pulls of +0.3 to +1.9. The push
# keeps its size while y⁻ sinks (each token's push is c·(1 − π), and 1 − π stays near 1), whereas the pull on y⁺
# fades as y⁺'s tokens become likely; both halves share the factor c = β(1 − a), which shrinks as the margin grows.
# Over many steps, the mass the push removes goes somewhere: the mass table above says where.
#
# ## What held in every run we made
# The rules, fixed before the runs: *falls* = ends below its start; *falls fastest* = the largest drop of the 13
# judged families; *bump* = the highest point lies strictly inside the run (a rise of +0.0 counts, so read the
# number); *most families fall* = more than half of the 13 end below their start (weaker than the paper's "almost
# every"); *squeezed into the argmax* = the `argmax` column of the mass table ends above its start at the positions
# of y⁻ and of y⁺; *repetition grows* = the trigram-repetition of greedy answers (the repeater) ends above its start.
# `argmax` is the peak token *now*, so part of its gain is tokens becoming the peak; `start_argmax` in
# `runs[k]["mass"]` follows the token that was the peak before DPO.
#
# In fast mode (400-step base models) every claim held in every seed on our machine. In full mode (3000-step base
# models, the README's table, hard world) five did not hold in every seed: y_u⁻'s drop was the largest only in one
# seed (random and shuffled text, hundreds of nats below 0, fell by more nats); y_u⁺'s brief rise showed in one
# seed and it ended below its start in two; at the positions of y⁺ the argmax (when it is not y⁺'s own token)
# *lost* a little mass, while at the positions of y⁻ it gained in every seed; and repetition grew in two seeds. The
# README's conditions table shows under which valley depth, optimizer, β and learning rate each claim appears.
# Asserted here is only what held everywhere, in the hard world.

# %%
assert claims["rejected falls"]["held"] == len(SEEDS)
assert claims["most families fall"]["held"] == len(SEEDS)
assert claims["star rises"]["held"] == len(SEEDS)
assert all(r["mass"][-1]["rejected"]["argmax"] > r["mass"][0]["rejected"]["argmax"] for r in runs)  # at y⁻'s positions

# %% [markdown]
# ## Exercises
# 1. Set `MODE = "easy"`. Before DPO, how deep is the valley, and how far is y* from y⁺? Which claims change? (The
#    asserts are for the hard world; in the easy one some of them fail.)
# 2. Build the config with `DPODynamicsConfig(..., optimizer="sgd", lr=1e-2)`. Does y⁺ now rise during the first
#    epoch before it falls? (Adaptive optimizers rescale DPO's small β(1 − a) away; plain SGD keeps it.)
# 3. Run `dpo(..., on_policy=True)`: every epoch the pairs are sampled from the current model and ranked by the
#    world's oracle, so y⁻ is an answer the model itself gives. Compare `squeeze_summary` of both runs. (The
#    tracker and the mass table still measure the world's y⁻, not the sampled one.)

# %%
print("lesson 9 OK")
