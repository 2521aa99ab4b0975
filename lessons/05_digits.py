# %% [markdown]
# # Lesson 5 — Learning dynamics of a digit classifier (paper Fig. 1)
#
# Classification is the cleanest case of Δ log π ≈ −η·A·K·G. Each input has a single V-vector of logits
# (V = 10 digits). We train a small MLP with SGD on scikit-learn's bundled 8 × 8 handwritten digits and look at
# three pictures:
#
# 1. **One step** on one image of a 4: how much does π(4) rise on every other image, grouped by that image's
#    true class? ‖K(x_o, x_u)‖ measures how similar the model finds the two images.
# 2. **The accumulated mean prediction matrix**: off-diagonal mass between look-alike classes.
# 3. **The stability of the eNTK ranking**: the scale of K changes during training, but its ranking of which
#    pairs of examples are alike settles early.

# %%
import os

import torch

from tinyld.classify import (DigitNet, entk_ranking_stability, lookalike_pairs, mean_prediction_matrix,
                             one_step_picture, train_digits)
from tinyld.dynamics import SFTUpdate, class_rows, one_step

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
EPOCHS = 6 if FAST else 15  # SGD epochs (lr 0.05, batch 32)
N_FOURS = 5 if FAST else 20  # how many training 4s to take one step on (the picture is averaged over them)
ETA = 0.05

run = train_digits(epochs=EPOCHS, lr=ETA)
xtr, ytr, xte, yte = run.data
print("test accuracy per epoch:", [round(a, 3) for a in run.test_acc])
assert run.test_acc[-1] > 0.9

# %% [markdown]
# ## 1. One step on a 4
# We take the model after one epoch, when predictions are not yet saturated. For each of several training 4s
# we predict the effect of one SGD step on (x_u, 4) on every test image. We average Δπ(4) and ‖K‖ by the test
# image's class.

# %%
early = DigitNet().double()
early.load_state_dict(run.checkpoints[1])
fours = (ytr == 4).nonzero()[:N_FOURS, 0]
pics = [one_step_picture(early, xtr[i], 4, xte, yte, ETA) for i in fours]
dpi = torch.stack([p["dpi"] for p in pics]).mean(0)  # (10,)
kn = torch.stack([p["k_norm"] for p in pics]).mean(0)  # (10,)
print("class        " + " ".join(f"{c:>7d}" for c in range(10)))
print("Δπ(4)        " + " ".join(f"{v:+7.4f}" for v in dpi.tolist()))
print("‖K(x_o,x_u)‖ " + " ".join(f"{v:7.1f}" for v in kn.tolist()))
order = dpi.argsort(descending=True).tolist()
print("classes whose π(4) rises most:", order[:4], "   least:", order[-3:])
assert order[0] == 4 and int(kn.argmax()) == 4  # other 4s move most and are most similar
assert dpi[4] > 3 * dpi[[c for c in range(10) if c != 4]].max()

# %% [markdown]
# The prediction is first order, and the real step agrees with it:

# %%
rep = one_step(early, SFTUpdate(class_rows(xtr[fours[0]][None], torch.tensor([4]))),
               class_rows(xte, torch.full((len(yte),), 4)), ETA)
print(rep.summary())
assert rep.err_tokens < 0.1

# %% [markdown]
# ## 2. The accumulated mean prediction matrix
# Row c is the mean of π over test images of class c, averaged over all checkpoints. The diagonal holds what
# was learned. The largest off-diagonal entries show which classes the model treats as look-alikes while it
# learns.

# %%
M = mean_prediction_matrix(run)
pairs = lookalike_pairs(M, 5)
print("largest off-diagonal pairs (symmetrised):", [(i, j, round(v, 3)) for i, j, v in pairs])
median = torch.tensor([v for _, _, v in lookalike_pairs(M, 45)]).median().item()
print(f"median pair: {median:.3f} — the top pair is {pairs[0][2] / median:.1f}× that")
assert pairs[0][2] > 2.5 * median  # the look-alike patches stand out

# %% [markdown]
# ## 3. The eNTK ranking settles early
# On all pairs of 24 test images we rank the pairs by ‖K‖ at each checkpoint and correlate each ranking with
# the final one (Spearman).

# %%
rho = entk_ranking_stability(run)
print("Spearman ρ vs final, per epoch:", [round(r, 3) for r in rho])
assert rho[2] > 0.9 and rho[-1] > 0.999

try:
    from tinyld.plots import bars, heatmap, lines

    print("figure:", bars({"mean Δπ(4) after one step on a 4": dpi, "mean ‖K(x_o, x_u)‖_F": kn},
                          [str(c) for c in range(10)], f"{OUT}/05_one_step.png", "", ""))
    digits = [str(c) for c in range(10)]
    print("figure:", heatmap(M, f"{OUT}/05_prediction_matrix.png", "mean π over training (rows: true class)",
                             digits, digits, "predicted", "true", annotate=True))
    print("figure:", lines(list(range(len(rho))), {"Spearman ρ": rho}, f"{OUT}/05_entk_stability.png",
                           "eNTK ranking vs final", "epoch", "ρ"))
except ImportError as e:
    print("(no figures:", e, ")")

# %% [markdown]
# ## Recap
# * One step on a 4 moves other 4s the most, and ‖K‖ ranks them as the most similar images.
# * Over training the mean prediction matrix shows which classes look alike to the model. In the 8 × 8 digits
#   these are not MNIST's 4↔9. Read the pairs off the printout above.
# * The eNTK's ranking settles within a few epochs while its scale keeps changing. This "stable eNTK" is what
#   lets one-step pictures explain whole training runs.
print("lesson 5 OK")
