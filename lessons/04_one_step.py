# %% [markdown]
# # Lesson 4 — One step, predicted vs actual
#
# *Paper: the one-step decomposition Δ log π ≈ −η·A·K·G itself, checked against a real step.*
#
# This lesson puts the pieces together. One SGD step on an updating example (x_u, y_u) changes log π on an
# observed example (x_o, y_o) by
#
#     [Δ log π(·|χ_o)]_m = −η Σ_l A_m(χ_o) · K_{m,l}(χ_o, χ_u) · G_l(χ_u) + O(η²)
#
# where χ = [x; y], m runs over the observed response positions and l over the updating ones
# (lessons/NOTES.md §1). We first build the right-hand side by hand: one backward (g_u = J_uᵀG), one
# forward-mode JVP (K·G = J_o g_u), then A. Then we let tinyld do the same over the **whole vocabulary at every
# observed position**, take the real step and measure the actual change. If the picture is right, the error
# shrinks like η². Finally we read what one step does to the probe families of a prompt, split a DPO step into
# its two halves, split a batch into its examples, and repeat the check with Adam and at GPT-2 size.
#
# Fast mode (`TINYLD_FAST=1`) uses a model pretrained for 400 steps; full mode uses the 3000-step model of the
# demo. Their numbers differ, so the text quotes both where it matters ("in our runs": seed 0, on a CPU). The
# asserts check only what held for both.

# %%
import os
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp

from tinyld import GPT, GPTConfig
from tinyld.data import make_batch
from tinyld.dynamics import contributions, one_step, sequence_change, step_size_for
from tinyld.evaluate import response_logprobs
from tinyld.kernel import predict
from tinyld.losses import ce_residual
from tinyld.pretrained import pretrained
from tinyld.updates import DPOUpdate, ResidualUpdate, SFTUpdate, lm_rows

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
PRETRAIN_STEPS = 400 if FAST else 3000  # cached in tinyld_out/cache
TARGET = 0.1  # nats: we choose η so that no observed sequence is predicted to move by more than this
GPT2_DIR = os.environ.get("TINYLD_GPT2_DIR")  # a local Hugging Face GPT-2 folder, if you have one
world, tok, model = pretrained(seed=0, steps=PRETRAIN_STEPS)
model = model.double().eval()  # float64: the η² check needs it

# %% [markdown]
# ## The observed responses: the probe families of one prompt
# We update on (x_u, y_u⁺) and observe log π(y | x_u) for the twelve response families of lessons/NOTES.md §4:
# the correct and the wrong answer, rephrases, another person's facts, other prompts' answers, an unrelated
# sentence, shuffled words and random words. All of them are read as answers to the *same* prompt x_u.

# %%
item = world.train_items()[0]
probes = world.probes(item)
names = list(probes)
obs = make_batch(tok, [item.prompt] * len(names), [probes[n] for n in names])  # (12, T)
ro = lm_rows(obs)  # every response position of every family: N_o rows
u_batch = make_batch(tok, [item.prompt], [item.chosen])  # (1, T) the updating example
update = SFTUpdate(lm_rows(u_batch))
print(f"x_u = {item.prompt!r}, y_u⁺ = {item.chosen!r};  {ro.n} observed rows × V = {tok.vocab_size}")

# %% [markdown]
# ## The decomposition by hand
# Four steps, each a line or two, at η = 1 (the prediction is linear in η, so we scale it afterwards):
#
# 1. **G**: the cross-entropy residual π − e_y at each updating row (one sequence, so no 1/B).
# 2. **g_u = J_uᵀG**: one backward pass of the scalar Σ⟨z_u, G⟩, whose parameter gradient is exactly J_uᵀG.
# 3. **K·G = J_o g_u**: one forward-mode JVP of the observed logits along the direction g_u.
# 4. **A**: Δz − (πᵀΔz)·1 at each observed row, then the factor −η.

# %%
ps = dict(model.named_parameters())  # θ, by name
z_u = model(u_batch.idx)[u_batch.mask]  # (N_u, V) updating logits, with their graph
y_u = u_batch.targets[u_batch.mask]  # (N_u,) the tokens of y_u⁺ (and EOS)
G = F.softmax(z_u.detach(), -1) - F.one_hot(y_u, tok.vocab_size)  # (N_u, V) step 1: π − e_y
g_u = dict(zip(ps, torch.autograd.grad((z_u * G).sum(), list(ps.values()))))  # step 2: J_uᵀG per parameter
theta = {k: p.detach() for k, p in ps.items()}
z_o, KG = jvp(lambda p: functional_call(model, p, (obs.idx,))[obs.mask], (theta,), (g_u,))  # step 3: (N_o, V)
pi_o = F.softmax(z_o, -1)  # (N_o, V)
per_eta = -(KG - (pi_o * KG).sum(-1, keepdim=True))  # (N_o, V) step 4: −A·K·G, Δ log π per unit η
assert torch.allclose(G, ce_residual(z_u.detach(), y_u), rtol=0, atol=1e-15)

# %% [markdown]
# How large a step? No observed sequence should move by more than TARGET nats, so
# η = TARGET / max over sequences of |Δ log π(y|x) per unit η|. `step_size_for` does exactly this. Then the
# library's `predict` (gradient + JVP + A) must give our hand-built tensor, and `one_step` takes the real step
# and puts the prediction next to the actual change.

# %%
per_seq = sequence_change(ro, per_eta)  # (12,) Δ log π(y|x) per unit η, summed over each family's tokens
ETA = TARGET / per_seq.abs().max().item()
print(f"η = {ETA:.3g} (step_size_for: {step_size_for(model, update, ro, TARGET):.3g})")
assert abs(ETA / step_size_for(model, update, ro, TARGET) - 1) < 1e-9
assert torch.allclose(ETA * per_eta, predict(model, ro, update, ETA), rtol=1e-9, atol=1e-15)
rep = one_step(model, update, ro, ETA)
assert torch.allclose(ETA * per_eta, rep.pred, rtol=1e-9, atol=1e-15)
print("by hand == predict == one_step's prediction;", rep.summary())

# %% [markdown]
# ## What one SFT step does to each family
# Predict before you run the next cell: which families will rise? Will `rejected` ("judy lives in cairo .")
# rise or fall? Will `random_tokens` rise or fall?

# %%
print(f"  {'family':14s} {'response':44s} {'predicted':>10s} {'actual':>10s}")
for k, n in enumerate(names):
    print(f"  {n:14s} {probes[n]:44s} {rep.pred_seq[k]:10.4f} {rep.actual_seq[k]:10.4f}")
assert rep.err_seq < 0.05 and rep.err_full < 0.05
chosen, rejected = names.index("chosen"), names.index("rejected")
assert rep.actual_seq[chosen] > 0  # SFT raises its own target…
assert rep.actual_seq[chosen] > rep.actual_seq[rejected]  # …and more than the wrong answer that shares its start

try:
    from tinyld.plots import lines, scatter

    print("figure:", scatter(rep.pred, rep.actual, f"{OUT}/04_pred_vs_actual.png",
                             f"Δ log π: {tok.vocab_size} tokens × {ro.n} positions\nSGD, η = {ETA:.2g}",
                             "predicted Δ log π (nats)", "actual Δ log π (nats)"))
except ImportError as e:
    print("(no figures:", e, ")")

# %% [markdown]
# The prediction matches the real step to within about a percent. What it says about the families depends
# on the model, and the next two cells explain why.
#
# ## Where in y⁺ the step acts
# A sequence's change is the sum of the changes at its positions. Predict: at which position of y⁺ will the
# change be largest? Hint: at position l the residual's entry for the written token is −(1 − π(y_l)), and its
# norm ‖G_l‖ (printed below) grows with 1 − π(y_l) too.

# %%
per_pos = rep.per_position(chosen)  # (N_u,) predicted change of each token of y⁺
pi_y = F.softmax(z_u.detach(), -1).gather(1, y_u[:, None])[:, 0]  # (N_u,) π(y_l) before the step
print(f"  {'token':8s} {'π(y_l)':>10s} {'‖G_l‖':>8s} {'Δ log π(y_l)':>13s}")
for w, p, g, d in zip(item.chosen.split() + ["<eos>"], pi_y.tolist(), G.norm(dim=-1).tolist(), per_pos.tolist()):
    print(f"  {w:8s} {p:10.2e} {g:8.3f} {d:+13.5f}")
big = G.norm(dim=-1).topk(2).indices  # the two positions with the largest residual
share = (per_pos[big].abs().sum() / per_pos.abs().sum()).item()
print(f"the two positions with the largest residual carry {share:.0%} of the change")
assert torch.isclose(per_pos.sum(), rep.pred_seq[chosen])
assert share > 0.8 and per_pos[0] > 0.6 * per_pos.sum()  # the first token carries most of the change

# %% [markdown]
# The step acts where the model is still unsure, because that is where the residual is large. Once the person's
# name is written, the rest of the answer ("lives in delhi .") is nearly certain. Which name *starts* the answer
# is not: many names follow "answer :" in the world's texts, and a tiny model copies the name from the question
# only unreliably. In our runs (seed 0) the fast-mode model gave "judy" less than 3 % there and the full-mode model
# 86 %, while every later token was nearly certain in both. So the SFT step acted mostly on the **first** response
# token: 77 % of y⁺'s change with the fast-mode model, and essentially all of it with the full-mode one.
#
# ## The first position is shared by every family
# Every family answers the same prompt, so at the first response position all of them read the *same*
# distribution π(· | x_u). The step changes that one distribution, and each family reads off its own first token:
# families that start with the same token ("judy" for chosen and rejected, "the" for the rephrases and hum) get
# exactly the same change there.
#
# Predict: will `random_tokens` ("bright honey …") rise or fall? Nothing in the update mentions those words. And
# how much of its change happens at its first position?

# %%
first = torch.tensor([int((ro.group == k).nonzero()[0]) for k in range(len(names))])  # each family's first row
with torch.no_grad():
    logp_first = F.log_softmax(z_o[first[0]], -1)  # (V,) log π(· | x_u) at the first position (same for all)
d_first = rep.actual[first[0]]  # (V,) its actual change
print(f"  {'family':14s} {'1st token':10s} {'log π':>7s} {'Δ at 1st':>9s} {'Δ elsewhere':>12s}")
for k, n in enumerate(names):
    t = int(ro.labels[first[k]])
    print(f"  {n:14s} {tok.decode([t]):10s} {logp_first[t]:7.2f} {rep.pred_tokens[first[k]]:+9.4f} "
          f"{rep.pred_seq[k] - rep.pred_tokens[first[k]]:+12.4f}")
top = logp_first.topk(3).indices.tolist()
print("most likely first tokens before the step:", [(tok.decode([t]), round(logp_first[t].exp().item(), 3))
                                                   for t in top])
print(f"at the first position {(d_first < 0).double().mean():.0%} of the vocabulary falls (median change "
      f"{d_first.median():+.4f}); largest falls:", [tok.decode([t]) for t in d_first.argsort()[:4].tolist()],
      " largest rises:", [tok.decode([t]) for t in d_first.argsort(descending=True)[:4].tolist()])
rt = names.index("random_tokens")
print(f"predicted: random_tokens {rep.pred_seq[rt]:+.4f} in total, {rep.pred_tokens[first[rt]]:+.4f} of it at its "
      f"first position;  chosen {rep.pred_seq[chosen]:+.4f}")
assert torch.isclose(rep.pred_tokens[first[chosen]], rep.pred_tokens[first[rejected]])  # same row, same token
assert torch.isclose(rep.pred_tokens[first[names.index("gpts_chosen")]], rep.pred_tokens[first[names.index("hum")]])

# %% [markdown]
# `random_tokens` rises although nothing in the update mentions its words. In our runs it was predicted to rise
# by 38 % of `chosen`'s rise with the fast-mode model (+0.038 against +0.100), and nearly as much as `chosen`
# with the full-mode model (+0.087 against +0.100). About half of that rise comes from its first position, which
# it shares with y⁺: the step acted mostly on y⁺'s first token, and there it moved the whole distribution that
# `random_tokens` also reads. The other half comes from its later positions, through K between those rows and
# y⁺'s rows. One SFT step can lift even random text.
#
# How does the rest of the vocabulary move at that shared position? With free logits (K = I), a step up on y
# lowers every other *logit* by η′π_i, so among the other tokens the likeliest loses the most (lessons/NOTES.md
# §3). Whether a token's log-probability falls also depends on the normaliser: here "judy" is unlikely and the
# mass sits on another name, and then, to first order, every token with π_i < ‖π‖² − π(judy) *rises*. With K = I
# only the top name or two would fall at this position. A network blurs that rule. K couples tokens, so some
# tokens move with "judy" and others against it, by amounts that do not follow their probability. Compare the
# share of tokens that fall, and the largest falls and rises printed above, with the most likely tokens.

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
                           f"{OUT}/04_eta_squared.png", "one-step error is O(η²)", "learning rate η",
                           "‖pred − actual‖_F over all rows × V (nats)", True, True))
except NameError:
    pass

# %% [markdown]
# ## A DPO step: two halves that are not symmetric
# The reference is the model itself, so the margin starts at 0 and both halves carry the same scale
# β(1 − a) = β/2 (lesson 2). Predict: will y⁺ rise by as much as y⁻ falls?

# %%
ref_c = response_logprobs(model, tok, [item.prompt], [item.chosen])  # (1,)
ref_r = response_logprobs(model, tok, [item.prompt], [item.rejected])  # (1,)
rows_c, rows_r = lm_rows(u_batch), lm_rows(make_batch(tok, [item.prompt], [item.rejected]))
dpo = DPOUpdate(rows_c, rows_r, ref_c, ref_r, beta=0.1)
rd = one_step(model, dpo, ro, ETA * 10)  # DPO's scale β/2 = 0.05 makes its gradient 20× smaller than SFT's
print(rd.summary())
for n in ("chosen", "rejected"):
    k = names.index(n)
    print(f"  {n:14s} predicted {rd.pred_seq[k]:+.5f}   actual {rd.actual_seq[k]:+.5f}")
assert rd.actual_seq[rejected] < 0 < rd.actual_seq[chosen]
assert abs(rd.actual_seq[rejected]) > abs(rd.actual_seq[chosen])

# %% [markdown]
# y⁻ falls more than y⁺ rises. Two facts explain it.
#
# 1. **The shared prefix cancels.** y⁺ and y⁻ both start with "judy lives in". On those rows the two halves
#    see the same logits and the same tokens, so G⁺ = −G⁻ exactly, and they cancel. The update comes only from
#    the rows where the answers differ, and the rows after them.
# 2. **y⁻'s distinguishing token sits in a valley.** At the answer word, G⁺'s entry for "delhi" is
#    −(1 − π("delhi")) and G⁻'s entry for "cairo" is +(1 − π("cairo")) (times β/2). The model is sure of
#    "delhi", so the pull is small. "cairo" is unlikely, so the push is at nearly full strength. This is the push
#    that does not fade (NOTES §3).
#
# `DPOUpdate.residuals` returns both halves. A `ResidualUpdate` with one of them predicts that half's effect
# alone. We drop the shared prefix rows from both halves, which changes nothing in their sum.

# %%
(_, _, Gc), (_, _, Gr) = dpo.residuals(model)  # (N_u, V) each: G⁺ on y⁺'s rows, G⁻ on y⁻'s rows
n_shared = 0
while rows_c.labels[n_shared] == rows_r.labels[n_shared]:
    n_shared += 1  # rows whose context and token agree in y⁺ and y⁻
print(f"shared prefix: {n_shared} rows; max |G⁺ + G⁻| there = {(Gc[:n_shared] + Gr[:n_shared]).abs().max():.1e}")
assert torch.allclose(Gc[:n_shared], -Gr[:n_shared], rtol=0, atol=1e-15)
with torch.no_grad():
    p_plus = F.softmax(rows_c.logits(model)[n_shared], -1)[rows_c.labels[n_shared]].item()
    p_minus = F.softmax(rows_r.logits(model)[n_shared], -1)[rows_r.labels[n_shared]].item()
w_plus, w_minus = (tok.decode([int(r.labels[n_shared])]) for r in (rows_c, rows_r))
print(f"at the answer word: π({w_plus}) = {p_plus:.3g}, ‖G⁺‖ = {Gc[n_shared].norm():.3g};   "
      f"π({w_minus}) = {p_minus:.3g}, ‖G⁻‖ = {Gr[n_shared].norm():.3g}")
assert Gr[n_shared].norm() > Gc[n_shared].norm()


def beyond_prefix(G):
    G = G.clone()
    G[:n_shared] = 0  # the shared prefix cancels between the halves anyway
    return G


half_c = sequence_change(ro, predict(model, ro, ResidualUpdate(rows_c, beyond_prefix(Gc)), ETA * 10))  # (12,)
pred_r = predict(model, ro, ResidualUpdate(rows_r, beyond_prefix(Gr)), ETA * 10)  # (N_o, V) rejected half alone
half_r = sequence_change(ro, pred_r)  # (12,)
print(f"  {'family':14s} {'chosen half':>12s} {'rejected half':>14s} {'sum':>9s} {'one_step':>9s}")
for n in ("chosen", "rejected"):
    k = names.index(n)
    print(f"  {n:14s} {half_c[k]:+12.5f} {half_r[k]:+14.5f} {half_c[k] + half_r[k]:+9.5f} {rd.pred_seq[k]:+9.5f}")
print(f"the rejected half moves y⁻ {abs(half_r[rejected] / half_c[chosen]):.0f}× as much as the chosen half moves y⁺")
assert torch.allclose(half_c + half_r, rd.pred_seq, rtol=1e-9, atol=1e-12)
assert abs(half_r[rejected]) > 3 * abs(half_c[chosen])  # the push on y⁻ outweighs the pull on y⁺
assert half_r[chosen] > 0  # pushing "cairo" down raises y⁺ too
on_plus = pred_r[ro.group == chosen].gather(1, ro.labels[ro.group == chosen][:, None])[:, 0]  # (6,) per token of y⁺
print("the rejected half's change of y⁺, token by token:",
      ", ".join(f"{w} {d:+.5f}" for w, d in zip(item.chosen.split() + ["<eos>"], on_plus.tolist())))
at_answer = (on_plus[n_shared] / on_plus.sum()).item()
print(f"share of that rise at the answer word '{w_plus}': {at_answer:.0%}")
assert at_answer < 0.5  # the rise of y⁺ lands mostly elsewhere, not on the peak "delhi"

# %% [markdown]
# Read the table. The rejected half lowers y⁻ many times more than the chosen half moves y⁺ (the ratio is printed
# above). The ratio is large because the pull on y⁺ fades as the model grows sure of "delhi", while the push on
# "cairo" stays near full strength however unlikely "cairo" already is.
#
# The rejected half also *raises* y⁺, by more than the chosen half does. In our runs the full-mode model's chosen
# half even lowered y⁺ a little (−0.00005), so the whole rise of y⁺ came from pushing "cairo" down. Where does
# that rise land? With free logits (K = I) it would land at the answer position: the mass freed from "cairo" flows
# to the most likely token there, "delhi" (statement 2 of NOTES §3). The token-by-token split above says
# otherwise. Most of the rise lands on y⁺'s first token "judy" (and, with the fast-mode model, on "lives"), which
# the step reaches only through K between positions. In our runs "delhi" got 20 % of it with the fast-mode model
# and 0 % with the full-mode one, where π(delhi) ≈ 1 leaves no room to rise. In a network, the squeezing
# statements of NOTES §3 are a guide, not a guarantee.

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
# splits exactly into the contributions of the 4 updating examples. The second example is tina's question, and
# its answer is exactly our `other_chosen` probe. Predict: will learning "tina works as a pilot ." as the answer
# to *tina's* question raise or lower it as an answer to *judy's* question?

# %%
batch_items = [world.train_items()[k] for k in (0, 6, 12, 18)]  # four people, four relations
assert batch_items[1].chosen == probes["other_chosen"]
upd4 = SFTUpdate(lm_rows(make_batch(tok, [i.prompt for i in batch_items], [i.chosen for i in batch_items])))
c = contributions(model, upd4, ro, ETA)  # (4 updating examples, 12 families)
cols = [names.index(n) for n in ("chosen", "other_chosen")]
print(f"  {'updating example':30s} {'chosen':>8s} {'other_chosen':>13s}")
for i, row in zip(batch_items, c[:, cols]):
    print(f"  {i.chosen:30s} {row[0]:+8.4f} {row[1]:+13.4f}")
r4 = one_step(model, upd4, ro, ETA)
assert torch.allclose(c.sum(0), r4.pred_seq)
other = names.index("other_chosen")
assert c[1, other] > 0  # learning B's answer to question B raises it as an answer to question A

# %% [markdown]
# The tina row raises log π("tina works as a pilot ." | judy's question): learning B's answer to question B
# makes it more likely as an answer to question A. Repeated over many steps, this is how SFT can teach a model
# to give question B's answer to question A. The paper offers it as one mechanism behind "correct answer, wrong
# question" hallucinations (NOTES §4). The other rows move the same probe too, up or down, partly through the shared
# first position of the section above.

# %% [markdown]
# ## The same check at GPT-2 scale (V = 50257)
# The model is randomly initialised, unless TINYLD_GPT2_DIR points at a local Hugging Face GPT-2 folder. The
# tokenizer is GPT-2's BPE, and the prediction covers all 50257 logits at every observed position: one gradient
# and one JVP, in float64 on the CPU. Full mode builds the real GPT-2 small shape (124M parameters). Fast mode
# keeps the full vocabulary but shrinks the body to 2 layers of width 256, so that the test suite stays quick.

# %%
from tinyld.tokenizers import GPT2BPE  # noqa: E402

bpe = GPT2BPE()
torch.manual_seed(0)
shape = dict(n_layer=2, n_embd=256, n_head=4) if FAST else {}
big = (GPT.from_hf(GPT2_DIR) if GPT2_DIR else GPT(GPTConfig.preset("gpt2", **shape))).double().eval()
print(f"GPT-2-vocabulary model: {big.num_params():,} parameters, V = {big.config.vocab_size} "
      f"({'imported' if GPT2_DIR else 'random init'})")
prompt = "Question: What is the capital of France? Answer:"
b_u = make_batch(bpe, [prompt], [" Paris."])
other_q = "Question: Where is the Eiffel Tower? Answer:"
b_o = make_batch(bpe, [prompt, prompt, other_q], [" Paris.", " Rome.", " Paris."])
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
# Read the summary line. A randomly initialised GPT-2 is not sure of anything, so this small η already moves
# log π(" Paris.") by a few nats, and the full-vocabulary error is several percent (7.7 % with the 124M model in
# our runs). That is the O(η²) term, not a bug: halving η divided it by about 4, as printed.

# %% [markdown]
# ## Recap
# * −η·A·K·G built by hand (residual, one backward, one JVP, A) equals `predict` and `one_step`'s prediction. It
#   matches the real step over the full vocabulary, and its error is O(η²).
# * A sequence's change is the sum of its positions' changes, and a step acts where the residual is large: here
#   mostly on y⁺'s first token. All answers to one prompt share that first position, so one step there moves
#   every family at once, and it can lift even random text.
# * In DPO, the shared prefix of y⁺ and y⁻ cancels. The push on y⁻'s unlikely token is much stronger than the
#   pull on y⁺'s likely one, and it raises y⁺ too: through K, mostly at y⁺'s first token, not at "delhi".
# * A batch's effect is the sum of its examples'. Learning B's answer to question B raises it as an answer to A.
# * For Adam and RMSprop, the JVP along the actual update replaces K·G. With GPT-2's vocabulary the same code
#   covers all 50257 logits with one gradient and one JVP.
#
# ## Exercises
# 1. **Step size and error.** Set `TARGET = 0.4`. Predict how the relative error `rep.err_seq` changes (hint:
#    the error is O(η²) and the change is O(η)). Check by printing `rep.summary()`.
# 2. **Where does DPO push?** Predict which position of y⁻ carries most of its DPO change, then check with
#    `rd.per_position(names.index("rejected"))`: the position you name should hold the largest absolute value.
# 3. **SFT on the wrong answer.** Take the SFT step on y⁻ instead, "judy lives in cairo ." (`rows_r`, made in
#    the DPO section above). Predict the sign of the change of `chosen`, then check with
#    `one_step(model, SFTUpdate(rows_r), ro, ETA)` and its `actual_seq[chosen]`.
#
# Check your answers with `python lessons/exercises/04_one_step.py`: it asks for the quantities behind these
# questions (the relative error for a target, the per-position change of y⁻, the actual change of y⁺), compares
# each with the step redone in plain PyTorch (autograd's gradient, the step by hand, the first-order change by
# reverse-mode autograd), and prints a hint on a miss. Worked solutions: `lessons/solutions/04_one_step.py`.

# %%
print("lesson 4 OK")
