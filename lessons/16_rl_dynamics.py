# %% [markdown]
# # Lesson 16 — RL with verifiable rewards: what a GRPO step moves
#
# *Beyond the paper: the decomposition of lessons/NOTES.md §1, the residuals of §2 and the negative gradient of §3,
# applied to GRPO. The losses and their residuals are in `tinyld/rl.py`; the experiment's claims and the rules
# they are judged by are in `tinyld/experiments/rl_dynamics/claims.py`.*
#
# Since the paper, finetuning has moved to reinforcement learning with verifiable rewards: sample G answers to a
# question from the model, grade each (1 if the final answer is right), and train on the samples weighted by
# their **advantage** Â_i = (r_i − mean r)/(std r + 1e-4) within the group (GRPO). The framework of this course
# covers it exactly. For one on-policy step the gradient is that of −(1/N) Σ_i (Â_i/n_i) Σ_t log π(y_{i,t}) (N the
# samples in the batch, n_i the tokens of sample i), so the residual on the logits is
#
#     G_{i,t} = (Â_i / (N n_i)) (π_{i,t} − e_{y_{i,t}})
#
# an SFT-like **pull** on every token of a sample with Â > 0 and a **push** — a negative gradient, like DPO's y⁻ —
# on every token of a sample with Â < 0. Everything the course said about negative gradients (squeezing, the
# mass going into the argmax) applies to the incorrect samples of every group that has a correct one (a group
# that is all wrong, or all right, has Â = 0 and moves nothing).
#
# We build one GRPO step by hand on a group of four samples, check it against the library and a real step, then
# run the experiment. Fast mode (`TINYLD_FAST=1`) uses the fast experiment (a 400-step base model, 24 RL steps,
# one seed); every number printed is this run's.

# %%
import os
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from tinyld.data import make_batch
from tinyld.dynamics import one_step, step_size_for
from tinyld.experiments.rl_dynamics import RLDynamicsConfig, run
from tinyld.experiments.rl_dynamics.tracking import fixed_probes, sft_model
from tinyld.rl import GRPOLoss
from tinyld.runtime import fast_mode
from tinyld.updates import GRPOUpdate, lm_rows

t0 = time.time()
FAST = fast_mode()
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
cfg = RLDynamicsConfig(seeds=[0], fast=FAST, out=f"{OUT}/rl16", threads=2)
task, model = sft_model(cfg, 0)  # the arithmetic task's SFT model: the start of RL
world, tok = task.world, task.tok  # the word problems and the tiny model's word tokenizer
fam = fixed_probes(cfg, task, model, 0)  # samples drawn once, graded; reference solutions
model = model.double()  # float64 for the by-hand checks below
print(f"{len(fam['correct'][0])} correct and {len(fam['incorrect'][0])} incorrect samples of the SFT model on "
      f"{cfg.probes} training questions")

# %% [markdown]
# ## 1. A group of four, by hand
# Take the training question with the most incorrect samples and form a group of four answers to it: two graded
# correct (its own correct samples, topped up with its reference solution and that solution's rewrite if it has
# fewer) and two incorrect. Rewards (1, 1, 0, 0); their advantages by hand.

# %%
by_q = {}
for kind in ("correct", "incorrect", "reference", "rewrite"):
    for x, y in zip(*fam[kind]):
        by_q.setdefault(x, {k: [] for k in ("correct", "incorrect", "reference", "rewrite")})[kind].append(y)
question = max(by_q, key=lambda x: len(by_q[x]["incorrect"]))
right = (by_q[question]["correct"] + by_q[question]["reference"] + by_q[question]["rewrite"])[:2]
wrong = by_q[question]["incorrect"][:2]
answers = right + wrong
problem = next(p for p in world.pool() if p.prompt() == question)
rewards = torch.tensor([float(world.grade(problem, y)) for y in answers], dtype=torch.float64)  # the grader
assert rewards.tolist() == [1.0, 1.0, 0.0, 0.0]
adv = (rewards - rewards.mean()) / (rewards.std() + 1e-4)  # std: unbiased, over the group (as TRL)
assert torch.allclose(adv, GRPOLoss("grpo").advantages(rewards[None])[0])
print(f"question: {question!r}")
for y, r, a in zip(answers, rewards, adv):
    print(f"  reward {r:.0f}  Â {a:+.3f}  {y[:70]!r}")

# %% [markdown]
# The grader reads the final answer only, so a "correct" sample may reach it by wrong steps: RL with this reward
# pulls those steps up too.
#
# **The residual by hand.** Each sample is its own sequence; n_i its scored tokens (the answer and the end token),
# N = 4. G = (Â_i/(N n_i))(π − e_y) at every scored position, compared with the library's `GRPOUpdate`.

# %%
b = make_batch(tok, [question] * 4, answers, model.config.block_size)
rows = lm_rows(b)
n_i = b.mask.sum(1).double()  # (4,) tokens per sample
z = model(b.idx)[b.mask].detach()  # (N_tok, V)
c = (adv / (4 * n_i))[rows.group]  # (N_tok,) the coefficient of each token
G = c[:, None] * (F.softmax(z, -1) - F.one_hot(rows.labels, z.shape[-1]))
update = GRPOUpdate(rows, adv)
(_, _, G_lib), = update.residuals(model)
assert torch.allclose(G, G_lib, atol=1e-12)
at_label = G.gather(1, rows.labels[:, None])[:, 0]
print("sign of G at each sample's own tokens:", [int(torch.sign(at_label[rows.group == i]).mean()) for i in range(4)],
      "(−1: pulled up, +1: pushed down)")

# %% [markdown]
# **The predicted change of every sample, and of the argmax.** As in lesson 4: one backward pass gives g = J_uᵀG,
# one forward-mode JVP gives K·G = J_o g at every observed row, and A turns it into Δ log π over the whole
# vocabulary: −η(KG − Σ_v π_v (KG)_v). We observe the four samples themselves and, along each sample, its
# teacher-forced argmax y* (the token the model finds likeliest at each of its positions). η is chosen so that no
# sample is predicted to move by more than 0.1 nats: a step where first order holds.

# %%
ETA = step_size_for(model, update, rows, 0.1)  # no sample predicted to move by more than 0.1 nats (lesson 14)
params = dict(model.named_parameters())
zu = model(b.idx)[b.mask]  # with its graph
g = dict(zip(params, torch.autograd.grad((zu * G).sum(), list(params.values()))))  # J_uᵀG
theta = {k: p.detach() for k, p in params.items()}
with torch.no_grad():
    zo, KG = jvp(lambda p: functional_call(model, p, (b.idx,))[b.mask], (theta,), (g,))
dlogp = -ETA * (KG - (F.softmax(zo, -1) * KG).sum(-1, keepdim=True))  # (N_tok, V) predicted Δ log π
own = dlogp.gather(1, rows.labels[:, None])[:, 0]
star = dlogp.gather(1, zo.argmax(-1, keepdim=True))[:, 0]
per_sample = torch.zeros(4, dtype=torch.float64).index_add_(0, rows.group, own)
rep = one_step(model, update, rows, ETA)  # the library's prediction and the real step (taken, then undone)
assert torch.allclose(per_sample, rep.pred_seq, rtol=1e-6, atol=1e-9)
print(f"η = {ETA:.3g}: predicted vs actual Δ log π(sample)")
for i in range(4):
    mask = rows.group == i
    print(f"  reward {rewards[i]:.0f}: predicted {per_sample[i]:+.4f}  actual {rep.actual_seq[i]:+.4f}   "
          f"its y*: {star[mask].sum():+.4f}")
print(rep.summary())
assert rep.err_seq < 0.2  # first order holds at this step

# %% [markdown]
# Read the table: a pulled sample is predicted to rise and a pushed one to fall, unless K couples them strongly
# enough to turn that around — a pull on one correct answer also moves the incorrect ones that share its words, and
# the push on an incorrect answer can hold a correct one back (the "lazy likelihood displacement" claim below).
# Along each sample, y* shows where its positions' likeliest tokens go; the squeezing effect of lesson 8 says the
# mass a push removes goes to the likeliest token.
#
# ## 2. The experiment
# `python -m tinyld rl-dynamics` runs GRPO and Dr. GRPO (no std division; one constant token normaliser, the
# longest answer it may sample) from this
# SFT model, and tracks the fixed samples, the reference solutions and their rewrites, the entropy per token with
# its first-order prediction along the real AdamW update, the halves of the measured steps, pass@k on held-out
# questions and answer lengths. Its claims are judged per seed by rules written down before the first full run.

# %%
result = run(cfg, overwrite=True)
r = result["seeds"][0]["runs"]["grpo"]
for ch in r["entropy_checks"]:
    print(f"  update at step {ch['step']:>3}: entropy change predicted {ch['predicted']:+.2e}, actual "
          f"{ch['actual']:+.2e}")
print(f"figure: {result['figure']}")

# %% [markdown]
# Read the claims table against the rules in `tinyld/experiments/rl_dynamics/claims.py`. In fast mode one seed and
# 24 steps decide little; the lab report (`tinyld/experiments/README.md`, "RL with verifiable rewards") has the
# full run with 3 seeds and says which claims held at this scale.
#
# The same experiment runs on a real LLM: `python -m tinyld rl-dynamics --model smollm2` first finetunes
# SmolLM2-135M-Instruct on the word problems (its answers must take the written form the grader reads), then runs
# RL from there, with fewer and smaller steps sized for a CPU; the lab report has that run too.
#
# ## Exercises
# 1. **Group advantages.** Write Â for GRPO and for Dr. GRPO from a (groups, G) table of rewards. What happens to a
#    group whose samples are all correct? Checked against a closed form.
# 2. **The clipped coefficient.** Given ρ = π_θ/π_old of a token, its advantage Â and ε, return c = −∂ℓ/∂log π_θ of
#    ℓ = −min(ρÂ, clip(ρ, 1 − ε, 1 + ε)Â). Checked against autograd.
# 3. **pass@k.** From n samples of which c are correct, the unbiased pass@k. Checked against counting subsets.
#
# Check your answers with `python lessons/exercises/16_rl_dynamics.py`; worked solutions:
# `lessons/solutions/16_rl_dynamics.py`.

# %%
print(f"total {time.time() - t0:.0f} s")
print("lesson 16 OK")
