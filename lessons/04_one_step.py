# %% [markdown]
# # Lesson 4 — One step, predicted vs actual
#
# This lesson puts the pieces together. One step on an updating example (x_u, y_u) changes log π on an
# observed example (x_o, y_o) by
#
#     [Δ log π(·|χ_o)]_m = −η Σ_l A_m(χ_o) · K_{m,l}(χ_o, χ_u) · G_l(χ_u) + O(η²)
#
# tinyld computes the right-hand side over the **whole vocabulary at every observed position**. It uses one
# backward (g_u = J_uᵀG) and one forward-mode JVP (K·G = J_o g_u), then applies A. Then it takes the real step
# and measures the actual change. If the picture is right, the error shrinks like η². We check this on the
# pretrained tiny model and on a 124M GPT-2-sized model.

# %%
import os
import time

import torch

from tinyld import GPT, GPTConfig
from tinyld.data import make_batch
from tinyld.demo import pretrained
from tinyld.dynamics import DPOUpdate, SFTUpdate, contributions, lm_rows, one_step, step_size_for
from tinyld.evaluate import response_logprobs

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
PRETRAIN_STEPS = 400 if FAST else 3000  # cached in tinyld_out/cache
TARGET = 0.1  # nats: we choose η so that no observed sequence is predicted to move by more than this
GPT2_DIR = os.environ.get("TINYLD_GPT2_DIR")  # a local Hugging Face GPT-2 folder, if you have one
world, tok, model = pretrained(seed=0, steps=PRETRAIN_STEPS)
model = model.double().eval()

# %% [markdown]
# ## The observed responses: the probe families of one prompt
# We update on (x_u, y_u⁺) and observe log π(y | x_u) for the response families of the paper's probing
# dataset (paper.md §4). All of them are answers to the *same* prompt x_u.

# %%
item = world.train_items()[0]
probes = world.probes(item)
names = list(probes)
obs = make_batch(tok, [item.prompt] * len(names), [probes[n] for n in names])
ro = lm_rows(obs)  # every response position of every family
update = SFTUpdate(lm_rows(make_batch(tok, [item.prompt], [item.chosen])))

# %% [markdown]
# How large a step? The prediction is linear in η, so one prediction at η = 1 gives Δ log π *per unit of
# learning rate*. `step_size_for` picks η so that no family is predicted to move by more than TARGET nats.
# A sharp, well-trained model gets a smaller η.

# %%
ETA = step_size_for(model, update, ro, TARGET)
print(f"η = {ETA:.3g}")
rep = one_step(model, update, ro, ETA)
print(f"SFT step on {item.prompt!r} → {item.chosen!r}\n{rep.summary()}\n")
print(f"  {'family':14s} {'response':44s} {'predicted':>10s} {'actual':>10s}")
for k, n in enumerate(names):
    print(f"  {n:14s} {probes[n]:44s} {rep.pred_seq[k]:10.4f} {rep.actual_seq[k]:10.4f}")
assert rep.err_seq < 0.05 and rep.err_full < 0.05
assert rep.actual_seq[names.index("chosen")] > 0  # SFT raises its own target
assert rep.actual_seq[names.index("chosen")] == rep.actual_seq.max()  # …more than any other family

# %% [markdown]
# The sequence-level change of each family is the sum of the changes at its positions. Here is where the SFT
# step acts within y⁺ itself:

# %%
per_pos = rep.per_position(names.index("chosen"))
for w, d in zip(item.chosen.split() + ["<eos>"], per_pos.tolist()):
    print(f"  {w:10s} {d:+.5f}")
assert torch.isclose(per_pos.sum(), rep.pred_seq[names.index("chosen")])

try:
    from tinyld.plots import lines, scatter

    print("figure:", scatter(rep.pred, rep.actual, f"{OUT}/04_pred_vs_actual.png",
                             f"Δ log π: {tok.vocab_size} tokens × {ro.n} positions\nSGD, η = {ETA:.2g}"))
except ImportError as e:
    print("(no figures:", e, ")")

# %% [markdown]
# ## The error is second order
# Halve η and the error should drop by 4. This is the exact check of the whole framework, in float64.

# %%
etas = [ETA * 2 ** -k for k in range(5)]
errs = [(lambda r: (r.pred - r.actual).norm().item())(one_step(model, update, ro, e)) for e in etas]
for e, err, nxt in zip(etas, errs, errs[1:] + [None]):
    print(f"  η = {e:.2e}   ‖pred − actual‖ = {err:.3e}" + (f"   ratio {err / nxt:.2f}" if nxt else ""))
ratios = [a / b for a, b in zip(errs, errs[1:])]
assert all(3.5 < q < 4.5 for q in ratios)
try:
    print("figure:", lines(etas, {"‖pred − actual‖": errs, "∝ η²": [errs[0] * (e / etas[0]) ** 2 for e in etas]},
                           f"{OUT}/04_eta_squared.png", "one-step error is O(η²)", "η", "error", True, True))
except NameError:
    pass

# %% [markdown]
# ## A DPO step: the negative gradient on y⁻
# The reference is the model itself, so the margin starts at 0. DPO pulls y⁺ up and pushes y⁻ down, each by
# the scale β(1 − a) = β/2.

# %%
ref_c = response_logprobs(model, tok, [item.prompt], [item.chosen])
ref_r = response_logprobs(model, tok, [item.prompt], [item.rejected])
dpo = DPOUpdate(lm_rows(make_batch(tok, [item.prompt], [item.chosen])),
                lm_rows(make_batch(tok, [item.prompt], [item.rejected])), ref_c, ref_r, beta=0.1)
rd = one_step(model, dpo, ro, ETA * 10)  # DPO's scale β/2 = 0.05 makes its gradient 20× smaller than SFT's
print(rd.summary())
for n in ("chosen", "rejected", "gpts_rejected", "other_chosen"):
    k = names.index(n)
    print(f"  {n:14s} predicted {rd.pred_seq[k]:+.5f}   actual {rd.actual_seq[k]:+.5f}")
assert rd.actual_seq[names.index("rejected")] < 0 < rd.actual_seq[names.index("chosen")]

# %% [markdown]
# ## Any optimizer: the JVP along the real update
# Adam does not step along −∇L, so A·K·G no longer describes its step. The first-order picture still holds
# along the update it actually takes: Δ log π ≈ A·J_o·(θ_{t+1} − θ_t).

# %%
adam_eta = 1e-6  # Adam's first step is ≈ η·sign(g) on every parameter: keep it small
ra = one_step(model, update, ro, adam_eta, optimizer=torch.optim.Adam(model.parameters(), lr=adam_eta))
print(ra.summary())
assert ra.err_seq < 0.05

# %% [markdown]
# ## Which training example moved this probe?
# Update on a batch of 4 prompts about 4 different people. The predicted change of each observed sequence
# splits exactly into the contributions of the 4 updating examples.

# %%
batch_items = [world.train_items()[k] for k in (0, 6, 12, 18)]  # four people, four relations
upd4 = SFTUpdate(lm_rows(make_batch(tok, [i.prompt for i in batch_items], [i.chosen for i in batch_items])))
c = contributions(model, upd4, ro, ETA)  # (4 updating examples, families)
print("  rows: updating example · columns: chosen, rejected, other_chosen, hum")
cols = [names.index(n) for n in ("chosen", "rejected", "other_chosen", "hum")]
for i, row in zip(batch_items, c[:, cols]):
    print(f"  {i.prompt[11:40]:30s}", " ".join(f"{v:+.5f}" for v in row.tolist()))
r4 = one_step(model, upd4, ro, ETA)
assert torch.allclose(c.sum(0), r4.pred_seq)
assert int(c[:, names.index("chosen")].argmax()) == 0  # y_u⁺ is moved most by its own example

# %% [markdown]
# ## The same check at GPT-2 size (124M parameters, V = 50257)
# The model is randomly initialised, unless TINYLD_GPT2_DIR points at a local Hugging Face GPT-2 folder. The
# vocabulary is GPT-2's BPE. The prediction covers all 50257 logits at every observed position: one gradient
# and one JVP, in float64 on the CPU.

# %%
from tinyld.tokenizers import GPT2BPE  # noqa: E402

bpe = GPT2BPE()
torch.manual_seed(0)
big = (GPT.from_hf(GPT2_DIR) if GPT2_DIR else GPT(GPTConfig.preset("gpt2"))).double().eval()
print(f"GPT-2-sized model: {big.num_params():,} parameters ({'imported' if GPT2_DIR else 'random init'})")
prompt = "Question: What is the capital of France? Answer:"
b_u = make_batch(bpe, [prompt], [" Paris."])
other = "Question: Where is the Eiffel Tower? Answer:"
b_o = make_batch(bpe, [prompt, prompt, other], [" Paris.", " Rome.", " Paris."])
t0 = time.perf_counter()
big_eta = 1e-5
rb = [one_step(big, SFTUpdate(lm_rows(b_u)), lm_rows(b_o), e) for e in (2 * big_eta, big_eta)]
print(f"{rb[1].summary()}   ({time.perf_counter() - t0:.1f} s for two steps)")
for k, lab in enumerate(["' Paris.' (trained)", "' Rome.' same prompt", "' Paris.' other prompt"]):
    print(f"  {lab:26s} predicted {rb[1].pred_seq[k]:+.6f}   actual {rb[1].actual_seq[k]:+.6f}")
ratio = (rb[0].pred - rb[0].actual).norm() / (rb[1].pred - rb[1].actual).norm()
print(f"  halving η divided the full-vocab error by {ratio:.2f}")
assert 3.5 < ratio < 4.5 and rb[1].err_seq < 0.05

# %% [markdown]
# ## Recap
# * The prediction −η·A·K·G matches the real step over the full vocabulary, and its error is O(η²).
# * A sequence's change is the sum of its positions' changes. A batch's effect is the sum of its examples'.
# * SFT raises y⁺ most. DPO also raises y⁺ but pushes y⁻ down through the negative gradient.
# * For Adam and RMSprop, the JVP along the actual update replaces K·G.
# * At GPT-2 size the same code runs over all 50257 logits with one gradient and one JVP.
print("lesson 4 OK")
