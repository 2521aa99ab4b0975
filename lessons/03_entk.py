# %% [markdown]
# # Lesson 3 — The eNTK K: which examples are "similar" to the model
#
# *Paper: the factor K (the eNTK) of the one-step decomposition, and its stable ranking.*
#
#     K(x_o, x_u) = ∇_θ z(x_o) · ∇_θ z(x_u)ᵀ
#
# This is the empirical neural tangent kernel between the logits of two inputs. One SGD step on x_u moves the
# logits of x_o by Δz_o = −η K(x_o, x_u) G(x_u). A large K therefore means that learning x_u drags x_o along.
# K is learned: it reflects what the network has come to treat as alike.
#
# For a language model, every scored position of a response has its own V logits, so K has one V × V block per
# pair of positions (m, l). tinyld has three routes to K (see `tinyld/kernel.py`), and this lesson uses all
# three on a tiny GPT pretrained on the synthetic world:
#
# 1. `kernel`: the **full** K, a V × V block per pair of positions. It is feasible only for tiny models.
# 2. `kernel_restricted`: K on **chosen** (position, token) logits. It costs one backward per chosen logit.
# 3. `kg`: K·G **contracted** with a residual G: one backward plus one forward-mode JVP, at any size.

# %%
import os
import statistics

import torch

from tinyld.data import make_batch
from tinyld.kernel import kernel, kernel_restricted, kg
from tinyld.pretrained import pretrained
from tinyld.updates import ResidualUpdate, lm_rows
from tinyld.world import RELATIONS

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
PRETRAIN_STEPS = 400 if FAST else 3000  # the demo's model; cached in tinyld_out/cache after the first run
world, tok, model = pretrained(seed=0, steps=PRETRAIN_STEPS)
model = model.double().eval()  # float64: exact checks

# %% [markdown]
# ## K on the answer word of 20 prompts (restricted route)
# We take 4 people × 5 relations. For each prompt, the chosen logit is the *correct answer word* at the position
# that predicts it, for example "delhi" in "judy lives in delhi .". The result is a 20 × 20 matrix of K
# entries.

# %%
people = world.train_people[:2] + world.test_people[:2]
relations = ["city", "job", "pet", "food", "color"]
items = [world.item(n, r) for n in people for r in relations]
batch = make_batch(tok, [i.prompt for i in items], [i.chosen for i in items])
rows = lm_rows(batch)  # one row per response position (N rows)
sel = []
for k, it in enumerate(items):
    r = int((rows.group == k).nonzero()[it.chosen.split().index(it.value)])  # the row predicting the value
    sel.append([r, int(rows.labels[r])])
sel = torch.tensor(sel)  # (20, 2): (row, token)
K = kernel_restricted(model, rows, sel)  # (20, 20)
print("K is symmetric:", torch.allclose(K, K.T), "  smallest eigenvalue / largest:",
      (torch.linalg.eigvalsh(K)[0] / torch.linalg.eigvalsh(K)[-1]).item())
assert torch.allclose(K, K.T) and torch.linalg.eigvalsh(K)[0] > -1e-9 * torch.linalg.eigvalsh(K)[-1]

# %% [markdown]
# Raw entries mix the *size* of each gradient with the *alignment* between two gradients. We normalise to a
# cosine, C_ab = K_ab / sqrt(K_aa K_bb), and average it over three kinds of pairs.

# %%
d = K.diag().sqrt()
C = K / d[:, None] / d[None, :]  # (20, 20) cosine similarity of the gradients
pairs = [(a, b) for a in range(len(items)) for b in range(len(items)) if a != b]
kinds = {
    "same relation, other person": [C[a, b].item() for a, b in pairs if items[a].relation == items[b].relation],
    "same person, other relation": [C[a, b].item() for a, b in pairs if items[a].name == items[b].name],
    "nothing shared": [C[a, b].item() for a, b in pairs
                       if items[a].relation != items[b].relation and items[a].name != items[b].name],
}
means = {k: statistics.mean(v) for k, v in kinds.items()}
for k, v in means.items():
    print(f"  mean cosine, {k:28s} {v:.3f}")
assert means["same relation, other person"] > 2 * means["nothing shared"]
assert means["same person, other relation"] > 2 * means["nothing shared"]

try:
    from tinyld.plots import heatmap

    labels = [f"{i.name}/{i.relation}" for i in items]
    print("figure:", heatmap(C, f"{OUT}/03_K_cosine.png", "eNTK cosine on the answer word", labels, labels,
                             xlabel="prompt b (person/relation)", ylabel="prompt a (person/relation)",
                             cmap="magma", cbar_label="cosine of the two answer-word gradients"))
except ImportError as e:
    print("(no figures:", e, ")")

# %% [markdown]
# ## One column of K: what rises when we push one token up
# Take one updating position l and one token v. Pretend the residual there is −e_v, so that a step raises z_v.
# The observed logits then move by η·K[:, :, l, v]. This is one column of K, and the contracted route computes
# it for *every* observed position and *every* token with a single JVP.

# %%
u = items[0]  # e.g. judy / city
o = items[10]  # another person, same relation
bu, bo = make_batch(tok, [u.prompt], [u.chosen]), make_batch(tok, [o.prompt], [o.chosen])
ru, ro = lm_rows(bu), lm_rows(bo)
l = u.chosen.split().index(u.value)
G = torch.zeros(ru.n, tok.vocab_size, dtype=torch.float64)
G[l, tok.encode(u.value)[0]] = -1.0  # "raise the logit of the answer word"
_, col = kg(model, ro, ResidualUpdate(ru, G))  # (N_o, V) = K(x_o, x_u)·G = −K[:, :, l, v]
m = o.chosen.split().index(o.value)
top = (-col[m]).topk(6).indices.tolist()
print(f"push '{u.value}' up in {u.prompt!r}\n  → at the answer word of {o.prompt!r} the logits that rise most:",
      [tok.decode([t]) for t in top])
assert col.shape == (ro.n, tok.vocab_size)

# %% [markdown]
# At the level of single tokens the picture is noisy. In this tiny model the tokens that rise are *not*
# reliably of the same kind as the pushed one: run the lesson with other seeds or pretraining lengths and see.
# The prompt-level similarity above is the robust signal. Single-token stories need more care, for example
# normalising each row and column of K (a cosine), as we did for prompts.

# %% [markdown]
# ## The full K at one pair of positions (full route)
# The full route builds Jacobians of all V logits. Here it yields the V × V block of K between the answer
# positions of the two prompts. The restricted and contracted routes must agree with it.

# %%
one_o = ro.subset(torch.arange(ro.n) == m)  # just the answer position of x_o
one_u = ru.subset(torch.arange(ru.n) == l)  # just the answer position of x_u
Kfull = kernel(model, one_o, one_u)[0, :, 0, :]  # (V, V)
v = tok.encode(u.value)[0]
print("full K column vs contracted route, max diff:", (Kfull[:, v] + col[m]).abs().max().item())
assert torch.allclose(Kfull[:, v], -col[m], rtol=1e-9, atol=1e-9)
names = sorted(RELATIONS["city"][0])
ids = [tok.encode(c)[0] for c in names]
try:
    print("figure:", heatmap(Kfull[ids][:, ids], f"{OUT}/03_K_city_block.png",
                             "K block: answer positions, city tokens", names, names,
                             xlabel=f"token at the answer position of {u.name}/{u.relation} (x_u)",
                             ylabel=f"token at the answer position of {o.name}/{o.relation} (x_o)", cmap="magma",
                             cbar_label="K entry (logit · logit)"))
except (ImportError, NameError) as e:
    print("(no figures:", e, ")")

# %% [markdown]
# ## Recap
# * K is a Gram matrix of logit gradients. K(x, x) is symmetric PSD and K(x_o, x_u) = K(x_u, x_o)ᵀ.
# * After pretraining, prompts that share a relation or a person have clearly more aligned gradients than
#   prompts that share nothing. That alignment is how learning one answer moves others.
# * The full route gives whole V × V blocks, the restricted route gives chosen entries, and the contracted route
#   gives whole columns (or K·G) with one JVP. All three agree.
#
# ## Exercises
# 1. **Symmetry across inputs.** Compute `kernel(model, one_u, one_o)` (the roles swapped). Predict how it relates
#    to `Kfull`, then check with `torch.allclose(kernel(model, one_u, one_o)[0, :, 0, :], Kfull.T)`.
# 2. **Is the similarity learned?** Build a randomly initialised model (`from tinyld import GPT, GPTConfig`),
#    `GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).double().eval()`, and recompute `means`. Do the two
#    asserts on `means` still hold? (Try it before you guess, with a few `torch.manual_seed`s. Careful: when the
#    "nothing shared" mean is near 0 or negative, "more than twice it" says little; compare the means themselves.)
# 3. **Another position.** Select the row that predicts each response's *first* token (the person's name) instead
#    of the answer word. Which kind of pair is now the most aligned? Read it off `means`.
#
# Check your answers with `python lessons/exercises/03_entk.py`: it asks for the quantities behind these questions
# (K with the roles swapped, from K alone; `means` for any model; `means` at the first response token), compares
# them with K recomputed and with gradients taken one by one with autograd, and prints a hint on a miss. Worked
# solutions: `lessons/solutions/03_entk.py`.

# %%
print("lesson 3 OK")
