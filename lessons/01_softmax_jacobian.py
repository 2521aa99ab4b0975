# %% [markdown]
# # Lesson 1 — The softmax Jacobian A
#
# *Paper: the factor A of the one-step decomposition Δ log π ≈ −η·A·K·G.*
#
# A language model turns logits z ∈ R^V into probabilities π = softmax(z). Learning dynamics asks how a
# small change of the logits, Δz, changes the log-probabilities. To first order the answer is
#
#     Δ log π = A · Δz,    A = ∇_z log softmax(z) = I − 1 πᵀ      (row i is e_i − π)
#
# A depends only on the current prediction π. In this lesson you will check three facts about it:
#
# 1. A·1 = 0. Adding the same constant to every logit changes nothing.
# 2. πᵀ·(A·Δz) = 0. Probability is conserved, so what one class gains the others lose.
# 3. ‖A‖²_F = V − 2 + V‖π‖². A peaky π (‖π‖² near 1) makes A larger. The paper calls this "peakiness".

# %%
import os

import torch
import torch.nn.functional as F

from tinyld.kernel import apply_A, softmax_jacobian
from tinyld.runtime import compare

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")  # the test suite runs every lesson in fast mode
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")  # where figures go
V = 8  # vocabulary size for the small examples
torch.manual_seed(0)

# %% [markdown]
# ## A from the formula vs A from autograd
# Autograd can differentiate log_softmax directly. It is our oracle: the closed form must equal it.

# %%
z = 2.0 * torch.randn(V, dtype=torch.float64)  # (V,) logits
pi = z.softmax(-1)  # (V,)
A = softmax_jacobian(z)  # (V, V)
J = torch.autograd.functional.jacobian(lambda x: F.log_softmax(x, -1), z)  # (V, V) autograd
err = compare("A = I − 1πᵀ vs autograd", A, J)
assert err < 1e-14

# %% [markdown]
# ## Three properties, checked on numbers

# %%
ones = torch.ones(V, dtype=torch.float64)
dz = torch.randn(V, dtype=torch.float64)  # (V,) an arbitrary change of the logits
print("A·1            =", (A @ ones).abs().max().item())
print("πᵀ·(A·Δz)      =", (pi @ (A @ dz)).item())
print("‖A‖²_F         =", (A ** 2).sum().item(), " closed form:", (V - 2 + V * (pi ** 2).sum()).item())
assert (A @ ones).abs().max() < 1e-14
assert abs(pi @ (A @ dz)) < 1e-14
assert torch.isclose((A ** 2).sum(), V - 2 + V * (pi ** 2).sum())
# apply_A never forms the V×V matrix: A·Δz = Δz − (πᵀΔz)·1, which is what tinyld uses at V = 50257
assert torch.allclose(apply_A(z, dz), A @ dz)

# %% [markdown]
# ## Peakiness: a confident prediction has a larger A
# We scale one set of logits by a temperature 1/τ. As π becomes one-hot, ‖π‖² → 1 and ‖A‖²_F → 2V − 2.
# When π is uniform, ‖π‖² = 1/V and ‖A‖²_F = V − 1.

# %%
scales = [0.0, 0.5, 1, 2, 4, 8, 16]
fro = []
for s in scales:
    p = (s * z).softmax(-1)
    fro.append((softmax_jacobian(s * z) ** 2).sum().item())
    print(f"scale {s:5.1f}   max π {p.max():.3f}   ‖π‖² {(p ** 2).sum():.3f}   ‖A‖²_F {fro[-1]:.3f}")
assert abs(fro[0] - (V - 1)) < 1e-12 and abs(fro[-1] - (2 * V - 2)) < 1e-3
assert all(a <= b + 1e-12 for a, b in zip(fro, fro[1:]))  # monotone in the peakiness here

# %%
try:
    from tinyld.plots import heatmap, lines

    print("figure:", heatmap(A, f"{OUT}/01_A.png", "A = I − 1πᵀ (row i = e_i − π)",
                             xlabel="j: logit z_j that moves", ylabel="i: log π_i that responds",
                             cmap="coolwarm", annotate=True, cbar_label="A_ij (0 is white)"))
    print("figure:", lines(scales, {"‖A‖²_F": fro, "V − 1 (uniform)": [V - 1] * len(scales),
                                     "2V − 2 (one-hot)": [2 * V - 2] * len(scales)},
                           f"{OUT}/01_peakiness.png", "peakier π ⇒ larger A", "logit scale s (z → s·z)",
                           "‖A‖²_F"))
except ImportError as e:
    print("(no figures:", e, ")")

# %% [markdown]
# ## Where A matters: a row of A moves mass between classes
# Suppose one step raises only the logit of class k, so Δz = e_k. Then Δ log π = A e_k = e_k − π_k·1. Class k
# gains (1 − π_k) in log-probability. Every other class loses π_k. When π_k is already near 1 the gain is
# small.
#
# The same factor 1 − π_k is the size of cross-entropy's residual π − e_k at class k (lesson 2). It fades as
# π_k → 1, but it does *not* fade as π_k → 0. So a loss that pushes an already unlikely class further down, as
# DPO does with its rejected response, keeps pushing at almost full strength. lessons/NOTES.md §3 builds the
# squeezing effect on this asymmetry.

# %%
k = int(pi.argsort()[-2])  # the runner-up class
d = A @ torch.eye(V, dtype=torch.float64)[k]  # (V,) Δ log π for Δz = e_k
print(f"raise logit {k} (π_k = {pi[k]:.3f}): Δ log π_k = {d[k]:.3f}, others {d[(k + 1) % V]:.3f}")
assert torch.isclose(d[k], 1 - pi[k]) and torch.allclose(d[torch.arange(V) != k], -pi[k].expand(V - 1))

# %% [markdown]
# ## Recap
# * A = I − 1πᵀ is the Jacobian of log softmax. It depends only on π.
# * A·1 = 0 and πᵀA = 0, so to first order a step shifts log-probability mass without creating any.
# * ‖A‖²_F = V − 2 + V‖π‖² grows as π gets peakier.
# * tinyld never forms A at full vocabulary size. `apply_A(z, Δz)` computes Δz − (πᵀΔz)·1.
#
# ## Exercises
# 1. **The spectrum of A.** Predict the eigenvalues of A before computing them. (Hint: what does A do to 1, and
#    what does it do to a vector v with πᵀv = 0?) Check with `torch.linalg.eigvals(A)`: one eigenvalue is 0 and
#    the other V − 1 are 1.
# 2. **When is A symmetric?** A = I − 1πᵀ is symmetric only for one π. Find it, then check with
#    `torch.allclose(softmax_jacobian(z), softmax_jacobian(z).T)` for that z and for the random `z` above.
# 3. **Lower a likely class.** Take Δz = −e_k for the most likely class k = `pi.argmax()`. Which classes gain
#    log-probability, and by how much? Check your formula against `A @ (-torch.eye(V)[k].double())`.
#
# Check your answers with `python lessons/exercises/01_softmax_jacobian.py`: fill in its three functions; each is
# compared with an independent computation, and a miss prints a hint. Worked solutions:
# `lessons/solutions/01_softmax_jacobian.py`.

# %%
print("lesson 1 OK")
