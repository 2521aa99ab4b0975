# %% [markdown]
# # Lesson 8 — The squeezing effect, in one softmax
#
# *Paper: the squeezing effect (its statements about a negative step on one softmax).*
#
# DPO pushes the rejected response y⁻ down. This lesson studies that push on the smallest possible model: a
# single softmax π = softmax(z) over V labels whose logits z are free parameters, so that K = I and a gradient
# step moves the logits directly. Pushing label y⁻ down means a gradient-descent step on L = log π(y⁻). Its
# gradient is ∂L/∂z = e_{y⁻} − π, so the step is
#
#     Δz = η′(π − e_{y⁻})          (a *negative* step; in DPO, η′ collects η·β(1 − a)/B from lesson 2)
#
# Every other logit i rises by η′π_i, and z_{y⁻} falls by η′(1 − π(y⁻)). After the step
# π′_i = π_i exp(Δz_i)/Z with Z = Σ_j π_j exp(Δz_j), so label i rises exactly when Δz_i > log Z. For i ≠ y⁻
# this is the **threshold rule** π_i > log(Z)/η′ (lessons/NOTES.md §3). Labels above the threshold gain, labels
# below it lose, and the mass taken from y⁻ and the small labels is *squeezed* into the peak.
#
# You will take one step by hand, then draw three pictures: a negative step on a valley label (off-policy), a
# negative step on the model's own answer (on-policy), and a positive (SFT) step. A last figure shows how the
# squeezing grows as y⁻ sinks deeper into a valley.

# %%
import itertools
import math
import os
from pathlib import Path

import torch

from tinyld.squeeze import logit_step, squeezed_into, who_moves

# ---- knobs -------------------------------------------------------------------------------------------
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")  # where figures go
DPI = int(os.environ.get("TINYLD_DPI", "110"))  # their resolution (rendered lessons ask for more)
ETA = 1.0  # η′, the step size on the logits
SCALE = 1.0  # multiplies the logits (an inverse temperature): larger is a peakier π
BASE = [3.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -5.0]  # V = 12 logits, label 0 the peak
Y_OFF = 9  # off-policy y⁻: a label in a valley
Y_ON = 0  # on-policy y⁻: the model's own likely answer

z = SCALE * torch.tensor(BASE, dtype=torch.float64)  # (V,)
V = z.numel()
pi = z.softmax(-1)  # (V,)
print("π =", " ".join(f"{p:.4f}" for p in pi.tolist()))

# %% [markdown]
# ## One step by hand
# Five labels with π = (0.40, 0.30, 0.15, 0.10, 0.05) and a negative step on the last one, η′ = 1. Write out
# Δz, Z and π′ with plain floats, then compare with `who_moves`, which does the same in torch. Predict first:
# for a small step the threshold log(Z)/η′ is about ‖π‖² − π(y⁻). Which labels rise?

# %%
p5 = [0.40, 0.30, 0.15, 0.10, 0.05]
y5, eta5 = 4, 1.0
dz5 = [eta5 * (p - (1.0 if i == y5 else 0.0)) for i, p in enumerate(p5)]  # η′(π − e_{y⁻})
Z5 = sum(p * math.exp(d) for p, d in zip(p5, dz5))
after5 = [p * math.exp(d) / Z5 for p, d in zip(p5, dz5)]  # π′_i = π_i exp(Δz_i) / Z
print(f"Z = {Z5:.4f}, threshold log(Z)/η′ = {math.log(Z5) / eta5:.4f}")
print("  i     π     Δz      π′    moves")
for i, (p, d, a) in enumerate(zip(p5, dz5, after5)):
    print(f"  {i}  {p:.3f}  {d:+.3f}  {a:.4f}  {'rises' if a > p else 'falls'}{'   (y⁻)' if i == y5 else ''}")
m5 = who_moves(torch.tensor(p5, dtype=torch.float64).log(), y5, eta5)
assert torch.allclose(m5["pi_after"], torch.tensor(after5, dtype=torch.float64), rtol=1e-12, atol=0)
assert abs(m5["threshold"] - math.log(Z5) / eta5) < 1e-12
assert m5["rises"].tolist() == [a > p for a, p in zip(after5, p5)]

# %% [markdown]
# The two labels above the threshold rise; the other two fall with y⁻. Note that log Z > 0 here: the little mass
# y⁻ gives up (0.05 → 0.015) does not pay for the rise of every other logit, so Z > 1 and some labels must lose.

# %%
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
except ImportError:
    plt = None
    print('(no figures: matplotlib is not installed; pip install ".[lessons]")')


def draw_step(m, y, title, path, sign=-1):
    """Left: π before and after, with the threshold log(Z)/η′. Right: log(π′_i/π_i), green rises, red falls."""
    if plt is None:
        return
    before, after = m["pi"].numpy(), m["pi_after"].numpy()
    x = range(len(before))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.5, 3.6))
    ax.bar([i - 0.2 for i in x], before, width=0.4, color="tab:gray", label="π before")
    ax.bar([i + 0.2 for i in x], after, width=0.4, color="tab:blue", label="π′ after")
    if "threshold" in m:
        rule = "labels above rise" if "share_threshold" in m else "labels below rise"
        name = "log(Z)/η′" if "share_threshold" in m else "−log(Z)/η′"
        ax.axhline(m["threshold"], color="tab:red", ls="--", lw=1,
                   label=f"threshold {name} = {m['threshold']:.3f} ({rule})")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(list(x), [("y⁻" if sign < 0 else "y") if i == y else str(i) for i in x])
    ax.set(xlabel="label", ylabel="probability", title="π before and after")
    ax.legend(fontsize=8)
    ratio = (m["pi_after"] / m["pi"]).log().numpy()
    bx.bar(list(x), ratio, color=["tab:green" if r > 0 else "tab:red" for r in ratio])
    bx.axhline(0, color="k", lw=0.5)
    bx.set_xticks(list(x), [("y⁻" if sign < 0 else "y") if i == y else str(i) for i in x])
    bx.set(xlabel="label", ylabel="log(π′/π)", title="who moves (green rises, red falls)")
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print("figure:", path)


def summary(m, y):
    """How many labels fall, the gain of the likeliest other label, and the mass taken from labels other than y⁻."""
    change = m["pi_after"] - m["pi"]  # (V,)
    others = torch.arange(V) != y
    top = squeezed_into(z, y)
    return {"falls": int((change[others] < 0).sum()), "top": top, "top_gain": change[top].item(),
            "from_y": -change[y].item(), "from_others": change[others].clamp(max=0).sum().abs().item()}


# %% [markdown]
# ## Picture 1: off-policy, y⁻ in a valley
# A peaked π over V = 12 labels, and a negative step on label `Y_OFF`, which the model gives almost no mass: a
# rejected response the model would not write. Predict: the threshold is roughly ‖π‖² − π(y⁻). How many labels
# clear it?

# %%
off = who_moves(z, Y_OFF, ETA)
s_off = summary(off, Y_OFF)
print(f"off-policy: π(y⁻) = {pi[Y_OFF]:.4f}, threshold = {off['threshold']:.4f}, ‖π‖² = {(pi ** 2).sum():.4f}")
print(f"  {s_off['falls']} of the {V - 1} other labels fall; label {s_off['top']} gains {s_off['top_gain']:.4f}; "
      f"y⁻ lost {s_off['from_y']:.4f} and the labels that fell lost {s_off['from_others']:.4f}")
draw_step(off, Y_OFF, f"off-policy negative step on label {Y_OFF} (π(y⁻) = {pi[Y_OFF]:.4f}), η′ = {ETA}",
          f"{OUT}/08_off_policy.png")
others = torch.arange(V) != Y_OFF
up = off["pi_after"] > off["pi"]
assert off["pi_after"][Y_OFF] < pi[Y_OFF]  # statement 1
assert up[squeezed_into(z, Y_OFF)]  # statement 2: the likeliest other label rises
assert torch.equal(up[others], (pi > off["threshold"])[others])  # statement 3, on the real π′
assert torch.equal(off["rises"][others], up[others])

# %% [markdown]
# Only the peak clears the threshold. y⁻ had almost nothing to give, so nearly all of the peak's gain was taken
# from the other labels: the rich get richer. Why? For i ≠ y⁻ the step is Δz_i = η′π_i, whatever y⁻ is. When
# π(y⁻) ≈ 0 that is all the step does, and raising every logit by its own probability *sharpens* π.

# %% [markdown]
# ## Picture 2: on-policy, y⁻ is the model's own answer
# The same π, but the negative step lands on label `Y_ON`, the peak: a rejected response the model itself would
# write, as in on-policy DPO.

# %%
on = who_moves(z, Y_ON, ETA)
s_on = summary(on, Y_ON)
print(f"on-policy:  π(y⁻) = {pi[Y_ON]:.4f}, threshold = {on['threshold']:.4f}")
print(f"  {s_on['falls']} of the {V - 1} other labels fall; label {s_on['top']} gains {s_on['top_gain']:.4f}; "
      f"y⁻ lost {s_on['from_y']:.4f} and the labels that fell lost {s_on['from_others']:.4f}")
draw_step(on, Y_ON, f"on-policy negative step on label {Y_ON} (π(y⁻) = {pi[Y_ON]:.4f}), η′ = {ETA}",
          f"{OUT}/08_on_policy.png")
print(f"labels that fall besides y⁻: off-policy {s_off['falls']}, on-policy {s_on['falls']};  "
      f"share thresholds {off['share_threshold']:.4f} vs {on['share_threshold']:.4f}")
assert on["pi_after"][Y_ON] < pi[Y_ON] and on["pi_after"][squeezed_into(z, Y_ON)] > pi[squeezed_into(z, Y_ON)]
# true for this π and η′ (the exercises change them):
assert s_off["falls"] > s_on["falls"]
assert s_off["top_gain"] > s_on["top_gain"]
assert s_off["from_others"] > s_on["from_others"]

# %% [markdown]
# Here y⁻ gives up a lot of mass, Z < 1, and the threshold is below zero: every other label rises, and nothing
# is taken from them. The squeezing needs y⁻ to be *unlikely*.
#
# Write the rule on shares. For i ≠ y⁻ let q_i = π_i/(1 − π(y⁻)), label i's share of the mass outside y⁻. Then
# π_i > log(Z)/η′ is the same as q_i > log Z/(η′(1 − π(y⁻))), the **share threshold**. Statements 1–5 are
# those of lessons/NOTES.md §3, and tests/test_squeeze.py checks each of them (statement 5 numerically, over
# generated cases; it is not proved here). Statement 5: with the other logits
# fixed, lowering z_{y⁻} leaves every share unchanged and raises the share threshold, so the set of
# labels that rise can only shrink. The deeper y⁻ sits in a valley, the more labels fall. Pictures 1 and 2 put
# y⁻ on two different labels, so statement 5 does not compare them directly (the shares differ). The curve at the
# end of this lesson does: it keeps one label and slides its logit from peak to valley.
#
# (The threshold on π_i itself, log Z/η′, is not monotone in π(y⁻); only the share threshold is.)

# %% [markdown]
# ## Picture 3: a positive (SFT) step does not squeeze
# SFT pushes a label y *up*: Δz = η′(e_y − π). Every other logit now *falls* by η′π_i, so
# π′_i/π_i = exp(−η′π_i)/Z. The larger the label, the smaller its ratio: the largest other labels lose the most
# share, and no mass is squeezed into a peak. Take the same valley label as y.

# %%
sft = who_moves(z, Y_OFF, ETA, sign=+1)
log_ratio = (sft["pi_after"] / sft["pi"]).log()  # (V,)
order = [i for i in pi.argsort(descending=True).tolist() if i != Y_OFF]  # the other labels, likeliest first
print(f"positive step on label {Y_OFF}: π(y) {pi[Y_OFF]:.4f} → {sft['pi_after'][Y_OFF]:.4f}")
print("  log(π′/π) of the others, likeliest first:", " ".join(f"{log_ratio[i]:+.3f}" for i in order))
print(f"  the peak, label {order[0]}: π {pi[order[0]]:.4f} → {sft['pi_after'][order[0]]:.4f}")
draw_step(sft, Y_OFF, f"positive (SFT) step on label {Y_OFF} (π(y) = {pi[Y_OFF]:.4f}), η′ = {ETA}",
          f"{OUT}/08_sft_step.png", sign=+1)
assert sft["pi_after"][Y_OFF] > pi[Y_OFF]
assert all(log_ratio[a] <= log_ratio[b] + 1e-12 for a, b in itertools.pairwise(order))  # likelier ⇒ smaller ratio

# %% [markdown]
# Compare the right panel with picture 1: the same label, pushed the other way, and the bars are ordered the
# other way round. Here the peak pays and the small labels gain. Which labels actually fall depends on Z; when y
# is itself the peak, every other label falls (lessons/NOTES.md §3).

# %% [markdown]
# ## The curve: deeper valleys squeeze more
# Keep the other logits fixed and slide z_{y⁻} of label `Y_OFF` from far below (π(y⁻) ≈ 10⁻⁶) to far above
# (π(y⁻) ≈ 0.999, where it is the model's own answer). The shares q_i of the other labels do not move, so we draw
# them as horizontal lines. A label falls where the share-threshold curve is above its line. The x axis is on a
# logit scale, which stretches both ends, π(y⁻) near 0 and near 1.

# %%
ETAS = [0.5, 1.0, 2.0]
ps = torch.sigmoid(torch.linspace(-14, 7, 211, dtype=torch.float64)).tolist()  # π(y⁻) from 8e-7 to 0.999
rest = torch.cat([z[:Y_OFF], z[Y_OFF + 1:]])  # (V − 1,) the other logits, fixed
shares = rest.softmax(-1)  # (V − 1,) q_i, the same for every z_{y⁻}
curves, fell = {}, {}
for eta in ETAS:
    curves[eta], fell[eta] = [], []
    for p in ps:
        zz = z.clone()
        zz[Y_OFF] = math.log(p / (1 - p)) + torch.logsumexp(rest, 0).item()  # so that π(y⁻) = p exactly
        m = who_moves(zz, Y_OFF, eta)
        curves[eta].append(m["share_threshold"])
        fell[eta].append((~m["rises"][others]).double().mean().item())
    n_max = round(max(fell[eta]) * (V - 1))
    first = max(p for p, f in zip(ps, fell[eta]) if f > 0)  # on the grid: the largest π(y⁻) where a label falls
    every = max(p for p, f in zip(ps, fell[eta]) if f == max(fell[eta]))
    print(f"η′ = {eta}: share threshold {curves[eta][-1]:+.4f} at π(y⁻) = {ps[-1]:.3f}, "
          f"{curves[eta][0]:+.4f} at π(y⁻) = {ps[0]:.0e};  labels start to fall at π(y⁻) ≈ {first:.3f}, "
          f"and {n_max} of {V - 1} fall from π(y⁻) ≈ {every:.3f} down")
    # statement 5 on the grid: the threshold and the fraction that falls only grow as π(y⁻) shrinks
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(curves[eta]))
    assert all(a >= b for a, b in itertools.pairwise(fell[eta]))
    assert curves[eta][0] < shares.max()  # statement 2: the likeliest other label always rises
    # as π(y⁻) → 0 the step on the others is Δz_i = η′q_i, and the threshold tends to log(Σ q_j exp(η′q_j))/η′
    limit = torch.log((shares * torch.exp(eta * shares)).sum()).item() / eta
    assert abs(curves[eta][0] - limit) < 1e-4

if plt is not None:
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for s in shares.tolist():
        ax.axhline(s, color="0.8", lw=0.8, ls=":")
    ax.plot([], [], color="0.8", ls=":", label="shares q_i of the other labels")
    for eta in ETAS:
        ax.plot(ps, curves[eta], label=f"η′ = {eta}")
        bx.plot(ps, fell[eta], label=f"η′ = {eta}")
    ax.axvline(pi[Y_OFF].item(), color="k", lw=0.6, ls="--", label=f"picture 1: π(y⁻) = {pi[Y_OFF]:.4f}")
    bx.axvline(pi[Y_OFF].item(), color="k", lw=0.6, ls="--")
    names = [i for i in range(V) if i != Y_OFF]  # shares[k] belongs to label names[k]
    for k in shares.argsort(descending=True)[:2].tolist():  # the two largest shares (the rest crowd near 0)
        ax.annotate(f"share of label {names[k]}", (ps[0], shares[k].item()), xytext=(2, 2),
                    textcoords="offset points", ha="left", va="bottom", fontsize=7, color="0.35")
    ax.set_ylim(top=shares.max().item() + 0.1)  # room for the text above the top share
    ticks = [1e-6, 1e-4, 1e-2, 0.5, 0.99, 0.999]
    for a in (ax, bx):
        a.set_xscale("logit")
        a.set_xticks(ticks, [f"{t:g}" for t in ticks])
        a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel="π(y⁻)  (z_y⁻ moved, the other logits fixed)", ylabel="log Z / (η′(1 − π(y⁻)))",
           title="share threshold")
    bx.set(xlabel="π(y⁻)", ylabel="fraction", title="fraction of the other labels that fall")
    ax.legend(fontsize=7)
    bx.legend(fontsize=8)
    fig.suptitle(f"negative step on label {Y_OFF}, step sizes η′ = {', '.join(str(e) for e in ETAS)}")
    fig.tight_layout()
    Path(OUT).mkdir(parents=True, exist_ok=True)
    fig.savefig(f"{OUT}/08_threshold.png", dpi=DPI)
    plt.close(fig)
    print("figure:", f"{OUT}/08_threshold.png")

# %% [markdown]
# Read the curve from right to left. While y⁻ is the model's own answer the threshold is below zero and nobody
# falls (for these step sizes; a large enough step lowers small labels even then, exercise 3). As z_{y⁻} sinks
# the threshold climbs across the share lines, one label after another starts to fall, and only the top share
# stays above it (statement 2). In this peaked π most shares are small and crowd just above zero, so the labels
# start to fall within a narrow band of π(y⁻) (printed above), soon after the threshold crosses zero. A larger η′
# raises the threshold and moves that band to the right.
#
# **The push does not fade** (statement 4). On the left the curve goes flat instead of back to zero. The push on
# z_{y⁻} is η′(1 − π(y⁻)), which tends to η′, not 0, as π(y⁻) → 0, and the step on the others tends to
# Δz_i = η′q_i: a fixed sharpening of the rest of π, however unlikely y⁻ already is. Repeat the step and watch:
# π(y⁻) vanishes within a few steps, yet the push stays at η′ and the peak keeps growing. Beside it, the push of
# repeated SFT steps on the peak fades as the peak wins.

# %%
STEPS = 10
zn, zp = z.clone(), z.clone()
top = squeezed_into(z, Y_OFF)
print(f" step   π(y⁻)    push on y⁻   π(label {top})   labels (of {V}) below their start   |   "
      f"SFT on label {top}: push")
for t in range(STEPS + 1):
    pn, pp = zn.softmax(-1), zp.softmax(-1)
    if t % 2 == 0:
        print(f" {t:4d}   {pn[Y_OFF]:.2e}   {ETA * (1 - pn[Y_OFF]):.4f}       {pn[top]:.4f}        "
              f"{int((pn < pi).sum()):2d}                         |   {ETA * (1 - pp[top]):.4f}")
    zn, zp = logit_step(zn, Y_OFF, ETA, -1), logit_step(zp, top, ETA, +1)
assert zn.softmax(-1)[top] > pi[top] and zn.softmax(-1)[Y_OFF] < pi[Y_OFF]

# %% [markdown]
# ## In a language model
# Each response position is one such softmax, and DPO's rejected half takes the negative step at every position
# of y⁻ (lesson 4 splits a real DPO step into its halves). When y⁻ is off-policy, a response the model would not
# write, its tokens sit in valleys, so at each position the push is at full strength and the freed mass is
# squeezed into the most likely token. The account of long off-policy DPO in lessons/NOTES.md §3 follows from
# this: over many steps the teacher-forced greedy response y* rises, while y⁺, y⁻ and most other responses
# fall. K ≠ I in a network couples the positions and the tokens, so the rules of this lesson are a guide there,
# not a guarantee; this lesson computed none of that in a network.
#
# ## Recap
# * A negative step Δz = η′(π − e_{y⁻}) lowers y⁻, raises the likeliest other label, and raises exactly the
#   labels with π_i > log(Z)/η′.
# * Off-policy (y⁻ in a valley) the step sharpens the rest of π: the peak gains and most labels fall. On-policy
#   (y⁻ the peak) every other label gains, to first order in η′.
# * On shares, the rule is monotone: the deeper y⁻ sits, the higher the share threshold and the more labels fall.
# * The push η′(1 − π(y⁻)) does not fade as y⁻ becomes unlikely; a positive step's push fades as its label wins.
#
# ## Exercises
# 1. **A strong runner-up.** Set `BASE[1] = 2.6`, so that π ≈ (0.50, 0.33, 0.07, …). Does the runner-up rise in
#    picture 1? One assert after picture 2 now fails. Which comparison of the off- and on-policy cases survives,
#    and why is "the mass taken from the other labels" a better measure of squeezing than the top label's gain?
# 2. **On-policy, but not the peak.** Set `Y_ON = 1`, the runner-up. Predict the sign of log Z before you run:
#    does every other label still rise? (Hint: compare π(y⁻) with ‖π‖² in the first-order threshold.) Two
#    asserts after picture 2 now fail (Python stops at the first): which, and what does that say about
#    "on-policy" at the runner-up?
# 3. **A big step on a flatter π.** Set `SCALE = 0.5` and `ETA = 8.0`. In picture 2 the threshold is now above
#    zero and some labels fall although y⁻ is the peak: "no other label falls" holds only to first order in η′
#    (lessons/NOTES.md §3). Which labels fall, the large or the small ones? Does the threshold rule still hold?
#
# Check your answers with `python lessons/exercises/08_squeezing.py`: it asks for the quantities behind these
# questions (the mass taken from the other labels, log Z, which labels fall), compares each with `who_moves`, and
# prints a hint on a miss. Worked solutions: `lessons/solutions/08_squeezing.py`.

# %%
print("lesson 8 OK")
