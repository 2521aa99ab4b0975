# %% [markdown]
# # Lesson 7 — Answer B to question A: the hallucination mechanism
#
# Lesson 6 showed that SFT on (x_j, y_j⁺) raises y_j⁺ even when it is read as the answer to *another* prompt x_u.
# The paper proposes this as a mechanism for one kind of hallucination: asked question A, the finetuned model
# gives the (correct) answer to question B. Here you see it twice.
#
# 1. **In the generations.** After every epoch the model answers the training and the held-out prompts greedily,
#    and the world, which knows every fact, sorts each answer: *correct*, *wrong value* of the right relation, the
#    answer to *another training question*, or *other*.
# 2. **In the attribution.** For one probe, y_{j≠u}⁺ under x_u, the engine predicts at every step how much each
#    training example in the batch moves it (−η·A·K·G_j, lessons/NOTES.md §1). Summed over the run, that splits
#    the whole rise of y_{j≠u}⁺ by training example, beside the actual rise. Is (x_j, y_j⁺) itself what raised it?
#
# The attribution run uses plain SGD with a small learning rate, where the split is exact to first order: the
# per-example predictions add up to the batch's prediction. With Adam the update is not a sum over examples.
# Fast mode (`TINYLD_FAST=1`) uses 400-step base models and 8 epochs; full mode 3000-step models and 20 epochs.

# %%
import os

from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, attribution, setup, sft_run
from tinyld.world import ANSWER_KINDS

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
SEEDS = [0, 1, 2]
cfg = SFTDynamicsConfig(seeds=SEEDS, modes=["hard"], epochs=20, pretrain_steps=3000, attr_prompts=4, fast=FAST)
print(f"SFT with {cfg.optimizer}, lr {cfg.lr:g}, {cfg.epochs} epochs; attribution with SGD, lr {cfg.attr_lr:g}")

# %% [markdown]
# ## The world as a judge
# `World.classify` reads the first sentence of an answer. Four hand-made answers to one training prompt:

# %%
model, tok, probes, world = setup(cfg, SEEDS[0], "hard")
item, other = world.train_items()[0], world.train_items()[7]
for answer in (item.chosen, item.rejected, other.chosen, "the old river runs near the tall house ."):
    print(f"  {world.classify(item, answer):15s} ← {answer}")
print(f"(the question: {item.prompt})")

# %% [markdown]
# ## Classified answers, epoch by epoch
# Counts summed over the three seeds (40 training and 40 held-out prompts per seed).

# %%
runs = []
for seed in SEEDS:
    model, tok, probes, world = setup(cfg, seed, "hard")
    runs.append(sft_run(cfg, seed, "hard", model, tok, probes, world))
epochs = runs[0]["generations"]["epochs"]
counts = {split: [{k: sum(r["generations"]["counts"][split][e][k] for r in runs) for k in ANSWER_KINDS}
                  for e in range(len(epochs))] for split in ("train", "test")}
print(f"{'epoch':>5s}  " + "  ".join(f"{s + ': ' + ' / '.join(k[:8] for k in ANSWER_KINDS):48s}"
                                    for s in ("train", "test")))
for e, ep in enumerate(epochs):
    print(f"{ep:5d}  " + "  ".join(f"{' / '.join(str(counts[s][e][k]) for k in ANSWER_KINDS):48s}"
                                  for s in ("train", "test")))
shown = [x for r in runs for ex in r["generations"]["examples"][1:] for x in ex if x["split"] == "test"][:3]
print("\nheld-out prompts answered with a training prompt's fact:")
for x in shown:
    print(f"  {x['prompt']}  →  {x['answer']}")

# %% [markdown]
# Before SFT the model gets the fact right for 40–50 % of the training questions (it read the facts in
# pretraining); after a few epochs, for all of them. On held-out prompts, "another training question's answer"
# goes from 0 or 1 of 120 answers before SFT to several after it: the model has learned to say the finetuned
# answers, and says some of them to the wrong question. Wrong values of the right relation grow too.

# %% [markdown]
# ## Attribution: which training example raised y_{j≠u}⁺ under x_u?
# For the first four training prompts u, the observed sequence is y_{j≠u}⁺ (the answer of training prompt j)
# read under x_u. At each SGD step, `contributions` gives one predicted change per example of the batch; the
# run adds them up per training example.

# %%
a = attribution(cfg, SEEDS[0], *setup(cfg, SEEDS[0], "hard")[:3])
print(f"{a['steps']} SGD steps, lr {a['lr']:g}:  R² of the summed predictions against the actual curve "
      f"{a['r2']:.4f}, final relative error {a['final_rel_err']:.3f}")
print(f"{'x_u':44s}{'actual':>8s}{'pred':>8s}{'from j':>8s}{'from u':>8s}{'others':>8s}  top example")
for p in a["probes"]:
    top = "j" if p["top_is_j"] else f"#{p['top_example']}"
    print(f"{p['prompt'][:44]:44s}{p['actual']:8.1f}{p['predicted']:8.1f}{p['from_j']:8.1f}{p['from_u']:8.1f}"
          f"{p['from_rest']:8.1f}  {top}")

# %% [markdown]
# Three things to read off the table:
#
# - The summed first-order predictions track the real curve closely over the whole run (R² near 1): the
#   decomposition is not only a one-step story.
# - For most probes the single example that raised y_{j≠u}⁺ the most is (x_j, y_j⁺) itself: the model learned
#   y_j⁺ under x_j, and K(x_u, x_j) is large because the two prompts share a template, so some of that rise lands
#   under x_u.
# - But the other 38 examples together raise it more. They all teach the *format* "fact sentence, then a story
#   sentence", which y_j⁺ also has. Both are parts of the mechanism.

# %%
from tinyld.plots import lines  # noqa: E402

steps = list(range(len(a["curve_actual"])))
path = lines(steps, {"actual": a["curve_actual"], "Σ predicted (−η·A·K·G per step)": a["curve_predicted"]},
             f"{OUT}/07_attribution.png", "y_{j≠u}⁺ under x_u: accumulated change (mean of 4 probes)", "SGD step",
             "Δ log π (nats)")
print(f"figure: {path}")

# %% [markdown]
# ## What held in every run we made

# %%
import torch  # noqa: E402

per_example = torch.tensor(a["per_example"])  # (examples, observed)
for k, p in enumerate(a["probes"]):
    assert abs(per_example[:, 2 * k].sum().item() - p["predicted"]) < 1e-6 * max(1.0, abs(p["predicted"]))
    assert p["actual"] > 0 and p["from_j"] > 0  # y_{j≠u}⁺ rose, and example j pushed it up
assert a["r2"] > 0.9  # the summed first-order predictions follow the real curve
assert sum(p["top_is_j"] for p in a["probes"]) >= 2  # j is the top single contributor for at least half
first, last = counts["test"][0]["other_question"], max(c["other_question"] for c in counts["test"][1:])
assert last > first  # more "answer B to question A" on held-out prompts after SFT than before

# %% [markdown]
# ## Exercises
# 1. Re-run the attribution with `attr_lr=1e-3` (`SFTDynamicsConfig(attr_lr=1e-3, ...)`). How does R² change?
#    Lesson 4 showed why: the error of the first-order prediction grows like η².
# 2. Attribute in easy mode (`setup(cfg, 0, "easy")`). Does y_{j≠u}⁺ still rise, and is j still the top example?
# 3. Pick a held-out prompt that got a training prompt's answer and find, in `probes.split("test")`, its
#    `other_chosen`. Is it the same answer the model gave?

# %%
print("lesson 7 OK")
