# %% [markdown]
# # Lesson 2 — The residual G: what the loss asks of the logits
#
# *Paper: the residual G of the one-step decomposition, for SFT and for DPO (its negative gradient).*
#
# G = ∂L/∂z is the residual of a loss at the updating example. It sets the direction and the energy of an
# update (lessons/NOTES.md §2). Log-probs of a response are **summed** over its tokens, and the batch loss is a mean
# over sequences, so every G below carries a factor 1/B.
#
# * SFT:  L = −log π(y⁺|x)                        G_l = (π_l − e_{y_l}) / B
# * DPO:  L = −log σ(β[(r⁺ − r⁻)]),  a = σ(β(r⁺ − r⁻))
#         chosen:   G⁺ = +β(1 − a)(π − e_{y⁺}) / B   pulls y⁺ up, like SFT but scaled
#         rejected: G⁻ = −β(1 − a)(π − e_{y⁻}) / B   pushes y⁻ down: the *negative gradient*
#
# In this lesson you derive each residual by hand and check it against torch.autograd.

# %%
import os

import torch

from tinyld import GPT, GPTConfig
from tinyld.data import make_batch
from tinyld.kernel import kg
from tinyld.losses import dpo_loss, dpo_residual, dpo_scale, sequence_logprob, sft_loss, sft_residual
from tinyld.runtime import compare
from tinyld.updates import SFTUpdate, lm_rows
from tinyld.world import World

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
BETA = 0.1  # DPO's β
torch.manual_seed(0)

world = World(0)
tok = world.tokenizer()
model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).double().eval()  # random init is enough here
items = world.train_items()[:3]
chosen = make_batch(tok, [i.prompt for i in items], [i.chosen for i in items])
rejected = make_batch(tok, [i.prompt for i in items], [i.rejected for i in items])
print("updating pairs:", *(f"\n  {i.prompt}  y⁺ = {i.chosen!r}  y⁻ = {i.rejected!r}" for i in items))

# %% [markdown]
# ## SFT: G = (π − e_y)/B at response positions, exactly 0 on the prompt

# %%
z = model(chosen.idx).detach().requires_grad_(True)  # (B, T, V) logits, a leaf so autograd gives ∂L/∂z
sft_loss(z, chosen.targets).backward()
G = sft_residual(z.detach(), chosen.targets)  # (B, T, V) by hand
assert compare("SFT residual vs autograd", G, z.grad) < 1e-15
print("G on prompt positions is exactly zero:", bool((G[~chosen.mask] == 0).all()))
print("each response position's G sums to 0 over V:", G[chosen.mask].sum(-1).abs().max().item())
assert (G[~chosen.mask] == 0).all() and G[chosen.mask].sum(-1).abs().max() < 1e-15

# %% [markdown]
# ## DPO: two halves with opposite signs
# The reference log-probs are fixed numbers. We take them from a *different* random model so that the margin
# is not zero.

# %%
ref = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).double().eval()
with torch.no_grad():
    ref_c = sequence_logprob(ref(chosen.idx), chosen.targets)  # (B,)
    ref_r = sequence_logprob(ref(rejected.idx), rejected.targets)  # (B,)
zc = model(chosen.idx).detach().requires_grad_(True)  # (B, T, V)
zr = model(rejected.idx).detach().requires_grad_(True)  # (B, T, V)
dpo_loss(sequence_logprob(zc, chosen.targets), sequence_logprob(zr, rejected.targets), ref_c, ref_r, BETA).backward()
Gc, Gr = dpo_residual(zc.detach(), chosen.targets, zr.detach(), rejected.targets, ref_c, ref_r, BETA)
assert compare("DPO chosen residual G⁺", Gc, zc.grad) < 1e-15
assert compare("DPO rejected residual G⁻", Gr, zr.grad) < 1e-15

# %% [markdown]
# ## What the sign of G means
# G lives on the logits, but a step changes the *parameters*. With J = ∂z/∂θ (the Jacobian of the updating
# logits), the parameter gradient is ∇_θL = JᵀG, so an SGD step moves the parameters by Δθ = −η·JᵀG. The logits
# then move by Δz = J·Δθ = −η·J·JᵀG = −η·K·G to first order, where K = JJᵀ is the eNTK of lesson 3.
#
# K is positive semi-definite, so ⟨G, Δz⟩ = −η·GᵀKG ≤ 0: the step moves z *against* G, measured in K's
# metric. That is why the sign of G at the written token is informative. A *negative* entry asks for that logit
# to rise (the loss falls when it rises), and a *positive* entry asks for it to fall. Single logits can still
# move the other way, because K couples them; only the K-weighted sum is guaranteed.
#
# Predict before you run: which sign will G⁺ have at the chosen tokens, and G⁻ at the rejected tokens?

# %%
def at_written(G, batch):
    return G.gather(-1, batch.targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[batch.mask]  # (N,)


print("G⁺ at the chosen tokens   (all < 0: asks the logit to rise):", at_written(Gc, chosen)[:6].tolist())
print("G⁻ at the rejected tokens (all > 0: asks the logit to fall):", at_written(Gr, rejected)[:6].tolist())
assert (at_written(Gc, chosen) < 0).all() and (at_written(Gr, rejected) > 0).all()

# %% [markdown]
# A numeric check of ⟨G, Δz⟩ ≤ 0 for the SFT residual. `kg` returns K·G at the updating rows themselves, and
# GᵀKG = ‖JᵀG‖² is the squared norm of the parameter gradient, which autograd gives us independently.

# %%
rows = lm_rows(chosen)  # the N scored (response) positions of the chosen batch
_, KG = kg(model, rows, SFTUpdate(rows))  # (N, V) K(x_u, x_u)·G
GKG = (G[chosen.mask] * KG).sum()  # GᵀKG, the same G as above restricted to the scored rows
model.zero_grad()
sft_loss(model(chosen.idx), chosen.targets).backward()
grad_sq = sum((p.grad ** 2).sum() for p in model.parameters())  # ‖∇_θ L‖² = ‖JᵀG‖²
print(f"GᵀKG = {GKG.item():.6g}   ‖∇_θ L‖² = {grad_sq.item():.6g}   so ⟨G, Δz⟩ = −η·{GKG.item():.4g} < 0")
assert GKG > 0 and torch.isclose(GKG, grad_sq, rtol=1e-10)

# %% [markdown]
# ## DPO's scale β(1 − a) fades as the margin grows
# a = σ(β(r⁺ − r⁻)) is how sure the model is that y⁺ beats y⁻. With a margin of 0 the scale is β/2. It
# falls towards 0 as the margin grows, and towards β as the model prefers y⁻.

# %%
margins = torch.linspace(-60, 60, 13, dtype=torch.float64)
zero = torch.zeros_like(margins)
scale = dpo_scale(margins, zero, zero, zero, BETA)  # (13,) with r⁺ − r⁻ = margin
for m, s in zip(margins.tolist(), scale.tolist()):
    print(f"  r⁺ − r⁻ = {m:6.1f}   β(1 − a) = {s:.4f}")
assert abs(scale[6] - BETA / 2) < 1e-15 and (scale.diff() < 0).all() and scale.max() < BETA

try:
    from tinyld.plots import lines

    print("figure:", lines(margins.tolist(), {"β(1 − a)": scale.tolist()}, f"{OUT}/02_dpo_scale.png",
                           f"DPO's scale, β = {BETA}", "margin r⁺ − r⁻ (nats)", "β(1 − a)"))
except ImportError as e:
    print("(no figures:", e, ")")

# %% [markdown]
# ## Recap
# * SFT's residual is π − e_y per response token. It vanishes as the model learns y.
# * A step moves the parameters by −η·JᵀG and the logits by −η·K·G, so ⟨G, Δz⟩ = −η·GᵀKG ≤ 0.
# * DPO is SFT on y⁺ plus a *negative* SFT on y⁻, both scaled by β(1 − a). The negative half is the force behind
#   the squeezing effect (lessons/NOTES.md §3). Lesson 4 takes a real DPO step and splits it into its halves.
# * Every residual is derived by hand and equals autograd to machine precision.
#
# ## Exercises
# 1. **Identical responses.** Run DPO with y⁻ = y⁺ (pass `chosen` and its logits for both). Predict G⁺ + G⁻.
#    Check with `torch.equal(Gc, -Gr)` on the output of `dpo_residual`.
# 2. **A larger β.** Set `BETA = 1.0`. What is β(1 − a) at margin 0, and how fast does it fade? Check with
#    `dpo_scale(margins, zero, zero, zero, 1.0)` and the first part of the assert (on `scale[6]`). Its other two
#    parts now fail, although β(1 − a) lies strictly in (0, β) in exact arithmetic: why? (Hint: print
#    `1 - torch.sigmoid(torch.tensor([-60.0, 40.0], dtype=torch.float64))`.)
# 3. **Your own loss.** Derive G for a length-normalised SFT loss, −log π(y|x)/|y| averaged over the batch. Check
#    it against autograd with `compare(...)` as in the SFT cell (hint: divide each row of `sft_residual` by its
#    sequence's response length, `chosen.mask.sum(1)`).
#
# Check your answers with `python lessons/exercises/02_residuals.py`: fill in its three functions; each is compared
# with autograd's gradient, and a miss prints a hint. Worked solutions: `lessons/solutions/02_residuals.py`.

# %%
print("lesson 2 OK")
