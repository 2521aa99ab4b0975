# %% [markdown]
# # Lesson 7 — Answer B to question A: the hallucination mechanism
#
# Lesson 6 showed that during SFT, y_{j≠u}⁺ (another training prompt's answer, read under x_u) rises. Which
# training examples raised it? The answer's own example (x_j, y_j⁺) is the obvious suspect; this lesson measures.
# The paper (§4, its discussion of Fig. 3) proposes this as a mechanism for one kind of hallucination: asked
# question A, the finetuned model gives the (correct) answer to question B. Here you see it twice.
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
# epochs. The figure needs matplotlib: `pip install ".[lessons]"` (or ".[plots]"); without it the lesson runs and says
# that it skips it.

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
# Counts summed over the seeds (three; two in fast mode), of 40 training and 40 held-out prompts per seed.

# %%
runs, worlds = [], []
for seed in SEEDS:
    model, tok, probes, world = setup(cfg, seed, "hard")
    runs.append(sft_run(cfg, seed, "hard", model, tok, probes, world))
    worlds.append(world)
epochs = runs[0]["generations"]["epochs"]
counts = {split: [{k: sum(r["generations"]["counts"][split][e][k] for r in runs) for k in ANSWER_KINDS}
                  for e in range(len(epochs))] for split in ("train", "test")}
n_answers = {split: sum(counts[split][0].values()) for split in ("train", "test")}  # answers per epoch
short = {"correct": "correct", "wrong_value": "wrong v", "other_question": "other q", "other": "other"}
print(f"{'':5s}  {'training prompts':^32s}  {'held-out prompts':^32s}")
print(f"{'epoch':5s}  " + "  ".join("".join(f"{short[k]:>8s}" for k in ANSWER_KINDS) for _ in range(2)))
for e, ep in enumerate(epochs):
    print(f"{ep:5d}  " + "  ".join("".join(f"{counts[s][e][k]:8d}" for k in ANSWER_KINDS) for s in ("train", "test")))
first, last = counts["test"][0]["other_question"], counts["test"][-1]["other_question"]
print(f"\nheld-out answers that are another training question's answer: {first} of {n_answers['test']} before SFT,"
      f"\n{last} after epoch {epochs[-1]}, at most {max(c['other_question'] for c in counts['test'])} in any epoch")

# %% [markdown]
# Some of those answers, with the training prompt whose fact each one states (`generations["examples"]` keeps up to
# four `other question` answers per epoch and run):

# %%
shown = [(w, x) for r, w in zip(runs, worlds) for ex in r["generations"]["examples"][1:] for x in ex
         if x["split"] == "test"][:3]
for w, x in shown:
    facts = {w.fact(o.name, o.relation, o.value, rephrase=ph): o for o in w.train_items() for ph in (False, True)}
    words = x["answer"].split()
    said = " ".join(words[: words.index(".") + 1] if "." in words else words)  # the first sentence, as classify reads
    print(f"  asked:   {x['prompt']}\n  answer:  {x['answer']}\n"
          f"  = the fact of the training prompt {facts[said].prompt!r}\n")
if not shown:
    print("  (none in this run: read the 'other q' column above)")

# %% [markdown]
# What to look for in the table:
#
# - **Training prompts.** The *correct* column climbs towards every training prompt, and the early *other q*
#   answers to training prompts disappear: SFT teaches each training question its own answer.
# - **Held-out prompts, other q.** This is the paper's "answer B to question A": a held-out question answered with a
#   training prompt's fact, word for word, as the answers printed above show (their first sentence is the fact of
#   the training prompt named under each; a story tail usually follows). In this small world it is rare: read the
#   count printed above against the number of held-out answers, and how it changes from epoch 0 to the last
#   epoch. The lab report (tinyld/experiments/README.md) gives the same count for the full-mode run (three seeds,
#   20 epochs). Because it is rare, the attribution below is the sharper measurement of the mechanism.
# - **Held-out prompts, wrong v.** The right person and relation with another value. Exercise 3 asks whether those
#   values come from training answers too.

# %% [markdown]
# ## Attribution: which training example raised y_{j≠u}⁺ under x_u?
# For the first four training prompts u, the observed sequence is y_{j≠u}⁺ (the answer of training prompt j, about
# another person and another relation) read under x_u. One SGD step on example j changes θ by −η∇L_j, and to first
# order log π(y_j⁺|x_u) then changes by ⟨∇log π(y_j⁺|x_u), −η∇L_j⟩. By the chain rule that is the sum, over the
# positions of y_j⁺, of the label entries of −η·A·K·G_j. First that number by hand, with two gradients in float64,
# against `contributions` for a batch holding only (x_j, y_j⁺):

# %%
import copy  # noqa: E402

from tinyld.data import PairData, make_batch  # noqa: E402
from tinyld.dynamics import contributions, sequence_change  # noqa: E402
from tinyld.kernel import predict  # noqa: E402
from tinyld.losses import sequence_logprob  # noqa: E402
from tinyld.updates import SFTUpdate, lm_rows  # noqa: E402

model, tok, probes, world = setup(cfg, SEEDS[0], "hard")
train = probes.split("train")
u = train[0]
y_j = u.responses["other_chosen"]
j = next(p for p in train if p.responses["chosen"] == y_j)  # the training prompt whose answer y_j⁺ is
m64 = copy.deepcopy(model).use_fast(False).double()  # float64: the two routes then agree to rounding
obs = make_batch(tok, [u.prompt], [y_j])  # y_j⁺ read under x_u
upd = make_batch(tok, [j.prompt], [y_j])  # the training example (x_j, y_j⁺): a batch of one
params = list(m64.parameters())
g_obs = torch.autograd.grad(sequence_logprob(m64(obs.idx), obs.targets).sum(), params)  # ∇θ log π(y_j⁺|x_u)
g_j = torch.autograd.grad(-sequence_logprob(m64(upd.idx), upd.targets).sum(), params)  # ∇θ L_j
by_hand = -cfg.attr_lr * sum((a * b).sum() for a, b in zip(g_obs, g_j)).item()
engine = contributions(m64, SFTUpdate(lm_rows(upd)), lm_rows(obs), cfg.attr_lr)[0, 0].item()
print(f"x_u: {u.prompt}\ny_j⁺: {y_j}\nx_j: {j.prompt}")
print(f"one SGD step on (x_j, y_j⁺), lr {cfg.attr_lr:g}: predicted Δ log π(y_j⁺|x_u)  by hand {by_hand:+.8f}, "
      f"contributions {engine:+.8f}")
assert abs(by_hand - engine) <= 1e-9 * max(1.0, abs(by_hand))

# %% [markdown]
# A real batch holds several examples. `contributions` gives one predicted change per example of the batch, and they add
# up to the batch's prediction, computed by `predict` on the whole batch:

# %%
observed = lm_rows(obs)
batch = SFTUpdate(lm_rows(PairData(tok, probes.examples("train"), cfg.batch_size, seed=SEEDS[0]).batch(0)))
per_ex = contributions(model, batch, observed, cfg.attr_lr)[:, 0]  # (B,) one predicted change per example
whole = sequence_change(observed, predict(model, observed, batch, cfg.attr_lr))[0]
print(f"step 0: {len(per_ex)} examples' predictions sum to {per_ex.sum().item():+.6f}; the batch's is "
      f"{whole.item():+.6f}")
assert torch.isclose(per_ex.sum(), whole, rtol=1e-5, atol=1e-9)

# %% [markdown]
# Now the whole run: `attribution` repeats this at every SGD step and adds the predictions up per training example.
# The table gives, per probe, the actual rise of y_{j≠u}⁺ under x_u, the summed prediction, and its split: from
# (x_j, y_j⁺), from (x_u, y_u⁺) itself, and from all the other training examples.

# %%
a = attribution(cfg, SEEDS[0], model, tok, probes)
print(f"{a['steps']} SGD steps, lr {a['lr']:g}: y_(j≠u)⁺ under x_u, summed predictions against the actual change "
      f"at every step: R² {a['r2']:.4f}; final relative error {a['final_rel_err']:.3f}")
print(f"{'x_u (question)':32s}{'actual':>8s}{'pred':>8s}{'from j':>8s}{'from u':>8s}{'others':>8s}  top example")
for p in a["probes"]:
    top = "j" if p["top_is_j"] else f"#{p['top_example']} ({train[p['top_example']].prompt[11:-9]})"
    print(f"{p['prompt'][11:-9]:32s}{p['actual']:8.1f}{p['predicted']:8.1f}{p['from_j']:8.1f}{p['from_u']:8.1f}"
          f"{p['from_rest']:8.1f}  {top}")
n = len(a["probes"])
top_j = sum(p["top_is_j"] for p in a["probes"])
rest_more = sum(p["from_rest"] > p["from_j"] for p in a["probes"])
share_j = sum(p["from_j"] for p in a["probes"]) / sum(p["predicted"] for p in a["probes"])
print(f"j is the top single contributor for {top_j} of {n} probes;\nall the other examples together give more than j "
      f"for {rest_more} of {n};\nsummed over the probes, j gives {share_j:.0%} of the predicted rise")

# %% [markdown]
# Four things to read off the table and the line below it:
#
# - **The first-order sums follow the real curve** over the whole run when R² is near 1: the decomposition is not
#   only a one-step story.
# - **Is (x_j, y_j⁺) the top single contributor?** Count the probes marked `j`. The model learned y_j⁺ under x_j, and
#   the same response read under x_u sees contexts [x_u; y_j⁺_<m] that differ from [x_j; y_j⁺_<m] only in the prompt,
#   so K between them is large and some of that rise lands under x_u.
# - **Is it most of the rise?** Compare `from j` with `others`, and read j's share on the last line. The other
#   examples all teach the *format* "fact sentence, then a story sentence", which y_j⁺ also has, and together they
#   can give more than j does. Both are parts of the mechanism.
# - **What does (x_u, y_u⁺) itself do?** Read `from u`. At the positions where y_u⁺ and y_j⁺ differ, the step on y_u⁺
#   pushes y_u⁺'s token up and, through A, y_j⁺'s down; where they share the format it pushes up. The column gives
#   the net of the two.

# %%
steps = list(range(len(a["curve_actual"])))
try:
    from tinyld.plots import lines

    path = lines(steps, {"actual": a["curve_actual"], "Σ predicted (−η·A·K·G per step)": a["curve_predicted"]},
                 f"{OUT}/07_attribution.png", f"y_j⁺ under x_u (j ≠ u), mean of {n} probes", "SGD step",
                 "accumulated Δ log π (nats)")
    print(f"figure: {path}")
except ImportError as e:
    print(f"(figure skipped: {e})")

# %% [markdown]
# ## What held in every run we made
# The attribution asserts held in fast and full mode in our runs. For the generations we assert what holds with a
# margin, and one weak statement on purpose: on held-out prompts, "another training question's answer" is no rarer
# after SFT than before (the counts above say by how much it grew).

# %%
for p in a["probes"]:
    assert p["actual"] > 0 and p["from_j"] > 0  # y_{j≠u}⁺ rose, and example j pushed it up
assert a["r2"] > 0.9  # the summed first-order predictions follow the real curve
assert top_j >= n / 2  # j is the top single contributor for at least half of the probes
tr0, tr1 = counts["train"][0], counts["train"][-1]
assert tr1["correct"] >= tr0["correct"] + n_answers["train"] // 4  # SFT teaches the training facts
assert tr1["other_question"] <= tr0["other_question"]  # B's answer to training question A does not grow
assert last >= first  # held-out prompts: "answer B to question A" is no rarer after SFT (weak on purpose)

# %% [markdown]
# ## Exercises
# 1. **A larger step.** Write `step_change(model, tok, prompt, response, batch, eta)`: the predicted (first-order)
#    and the actual change of log π(y|x) in one plain-SGD step of lr η on a batch. For y_j⁺ under x_u (`y_j`,
#    `u.prompt`) and the attribution's first batch, `PairData(tok, probes.examples("train"), cfg.batch_size,
#    seed=SEEDS[0]).batch(0)`, predict how the relative error |predicted − actual|/|actual| changes from η = 1e-4 to
#    1e-3, then compute it. Then re-run the attribution with `attr_lr=1e-3`
#    (`SFTDynamicsConfig(attr_lr=1e-3, ...)`). How does R² change? Lesson 4 showed that one step's error grows like
#    η²; relative to the change itself (which grows like η) it grows like η.
# 2. **Easy mode.** Write `per_example(model, tok, prompt, response, batch, eta)`: the predicted change of
#    log π(y|x) due to each example of the batch in one plain-SGD step (the by-hand cell above, for a batch of B).
#    Predict, then compute, which example of a batch holding (x_u, y_u⁺), (x_j, y_j⁺) and a few other training
#    examples gives y_{j≠u}⁺ under x_u the largest push, in hard mode and in easy mode (`setup(cfg, 0, "easy")`).
#    Then attribute the whole run in easy mode: does y_{j≠u}⁺ still rise, and is j still the top example?
# 3. Where do the wrong answers on held-out prompts come from? Finetune a copy of `model` yourself:
#    `m = copy.deepcopy(model)`, `data = PairData(tok, probes.examples("train"), cfg.batch_size, seed=SEEDS[0])`,
#    `Trainer(m, data, TrainConfig(task="sft", steps=cfg.epochs * data.batches_per_epoch, lr=cfg.lr,
#    grad_clip=0.0, progress=False), tok).run()` (from `tinyld.train`). Answer every held-out prompt with
#    `tinyld.evaluate.greedy_answers(m, tok, [it.prompt for it in world.test_items()], 24)`, and write
#    `answer_sources(world, items, answers)`: one code per answer (the exercise file lists them) that says, for an
#    `other_question` answer (`world.classify`), whether the training prompt whose fact was said is of the same
#    relation, of the same person, or neither, and for a `wrong_value` answer, whether the wrong value is the value
#    of a training fact of the same relation (`world.train_items()`: `relation`, `value`). Predict the counts first.
#
# Check your answers with `python lessons/exercises/07_hallucination.py`: fill in its three functions; exercises 1
# and 2 are compared with float64 central differences of log π along the step, exercise 3 with a parse of the
# world's sentences, and a miss prints a hint. Worked solutions: `lessons/solutions/07_hallucination.py`.

# %%
print("lesson 7 OK")
