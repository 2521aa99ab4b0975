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
# The attribution run uses plain SGD with a small learning rate. The per-example predictions add up exactly to the
# batch's prediction (the prediction is linear in G), and with a small step that prediction is close to the real
# change (it is first order). With Adam the update is not a sum over examples, so there is no such split.
# Fast mode (`TINYLD_FAST=1`) uses two seeds with 400-step base models and 8 epochs; full mode 3000-step models and 20
# epochs.

# %%
import os

import torch

from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, attribution, setup, sft_run
from tinyld.world import ANSWER_KINDS

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
SEEDS = [0, 1] if FAST else [0, 1, 2]  # fast mode: two seeds, to keep the test suite short
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
# Counts summed over the seeds (three; two in fast mode) (40 training and 40 held-out prompts per seed).

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
# pretraining); after a few epochs, for all of them, and its early "other question" answers to training prompts
# disappear. On held-out prompts, "another training question's answer" is rare but grows: from 0 of 120 to at most
# 2 in fast mode, and from 1 to 10 of 120 after 20 epochs in full mode (the README). Wrong values of the right
# relation grow more: the answers above are mostly another person's fact of the *same* relation, said about the
# person asked for. Both are the finetuned answers, said to the wrong question.

# %% [markdown]
# ## Attribution: which training example raised y_{j≠u}⁺ under x_u?
# For the first four training prompts u, the observed sequence is y_{j≠u}⁺ (the answer of training prompt j, about
# another person and another relation) read under x_u. At each SGD step, `contributions` gives one predicted
# change per example of the batch; the run adds them up per training example. First, on one step, the split adds up
# to the batch's prediction, computed by `predict` on the whole batch:

# %%
from tinyld.data import PairData, make_batch  # noqa: E402
from tinyld.dynamics import contributions, sequence_change  # noqa: E402
from tinyld.kernel import predict  # noqa: E402
from tinyld.updates import SFTUpdate, lm_rows  # noqa: E402

model, tok, probes, world = setup(cfg, SEEDS[0], "hard")
u = probes.split("train")[0]
observed = lm_rows(make_batch(tok, [u.prompt], [u.responses["other_chosen"]]))
batch = SFTUpdate(lm_rows(PairData(tok, probes.examples("train"), cfg.batch_size, seed=SEEDS[0]).batch(0)))
per_ex = contributions(model, batch, observed, cfg.attr_lr)[:, 0]  # (B,) one predicted change per example
whole = sequence_change(observed, predict(model, observed, batch, cfg.attr_lr))[0]
print(f"step 0: {len(per_ex)} examples' predictions sum to {per_ex.sum().item():+.6f}; the batch's is "
      f"{whole.item():+.6f}")
assert torch.isclose(per_ex.sum(), whole, rtol=1e-5, atol=1e-9)

# %% [markdown]
# Now the whole run. The table gives, per probe, the actual rise of y_{j≠u}⁺ under x_u, the summed prediction, and
# its split: from (x_j, y_j⁺), from (x_u, y_u⁺) itself, and from the other 38 examples.

# %%
a = attribution(cfg, SEEDS[0], model, tok, probes)
print(f"{a['steps']} SGD steps, lr {a['lr']:g}: y_(j≠u)⁺ under x_u, summed predictions against the actual change "
      f"at every step: R² {a['r2']:.4f}; final relative error {a['final_rel_err']:.3f}")
print(f"{'x_u (question)':32s}{'actual':>8s}{'pred':>8s}{'from j':>8s}{'from u':>8s}{'others':>8s}  top example")
train = probes.split("train")
for p in a["probes"]:
    top = "j" if p["top_is_j"] else f"#{p['top_example']} ({train[p['top_example']].prompt[11:-9]})"
    print(f"{p['prompt'][11:-9]:32s}{p['actual']:8.1f}{p['predicted']:8.1f}{p['from_j']:8.1f}{p['from_u']:8.1f}"
          f"{p['from_rest']:8.1f}  {top}")

# %% [markdown]
# Three things to read off the table:
#
# - The summed first-order predictions track the real curve closely over the whole run (R² near 1): the
#   decomposition is not only a one-step story.
# - For most probes the single example that raised y_{j≠u}⁺ the most is (x_j, y_j⁺) itself: the model learned
#   y_j⁺ under x_j, and the same response read under x_u sees contexts [x_u; y_j⁺_<m] that differ from
#   [x_j; y_j⁺_<m] only in the prompt, so K between them is large and some of that rise lands under x_u.
# - For most probes the other 38 examples together raise it more. They all teach the *format* "fact sentence,
#   then a story sentence", which y_j⁺ also has. Both are parts of the mechanism.
# - Training on (x_u, y_u⁺) itself barely moves y_j⁺ under x_u, and sometimes lowers it: at their differing tokens
#   it pushes y_u⁺'s token up and, through A, y_j⁺'s down.

# %%
from tinyld.plots import lines  # noqa: E402

steps = list(range(len(a["curve_actual"])))
path = lines(steps, {"actual": a["curve_actual"], "Σ predicted (−η·A·K·G per step)": a["curve_predicted"]},
             f"{OUT}/07_attribution.png", "y_j⁺ under x_u (j ≠ u), mean of 4 probes", "SGD step",
             "accumulated Δ log π (nats)")
print(f"figure: {path}")

# %% [markdown]
# ## What held in every run we made

# %%
for p in a["probes"]:
    assert p["actual"] > 0 and p["from_j"] > 0  # y_{j≠u}⁺ rose, and example j pushed it up
assert a["r2"] > 0.9  # the summed first-order predictions follow the real curve
assert sum(p["top_is_j"] for p in a["probes"]) >= 2  # j is the top single contributor for at least half
first, last = counts["test"][0]["other_question"], max(c["other_question"] for c in counts["test"][1:])
assert last > first  # more "answer B to question A" on held-out prompts after SFT than before

# %% [markdown]
# ## Exercises
# 1. Re-run the attribution with `attr_lr=1e-3` (`SFTDynamicsConfig(attr_lr=1e-3, ...)`). How does R² change?
#    Lesson 4 showed that one step's error grows like η²; relative to the change itself (which grows like η) it
#    grows like η.
# 2. Attribute in easy mode (`setup(cfg, 0, "easy")`). Does y_{j≠u}⁺ still rise, and is j still the top example?
# 3. Take one held-out prompt that got a training prompt's answer (the list above). Which training prompt's fact
#    did it say: the same relation, the same person, or neither? Count the three cases over all such answers in
#    `runs[0]["generations"]["examples"]`.

# %%
print("lesson 7 OK")
