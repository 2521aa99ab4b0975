# %% [markdown]
# # Lesson 6 — What SFT does to every other answer
#
# Finetune a model on (x_u, y_u⁺) and y_u⁺ becomes more likely. What happens to every *other* response? The
# paper's Fig. 3 tracks log π(y|x_u) for a family of responses (lessons/NOTES.md §4) through SFT:
#
# - the chosen answer y_u⁺ rises;
# - responses **similar** to it (the rejected answer y_u⁻, rephrases, y_test⁺: a held-out prompt's answer, and
#   y_init: the model's own first answer) rise first, then fall;
# - y_{j≠u}⁺, the answer of *another training prompt* read under x_u, keeps rising and ends above y_test⁺ (we
#   compare how far each rose since the start: the two families have different lengths);
# - **non-human** text (shuffled words, random words) falls;
# - y*, the teacher-forced argmax along y⁺, rises.
#
# Here you watch Fig. 3 appear for your own tiny model, over three seeds (two in fast mode), and read the claims
# table: for each claim, what was measured per seed and whether it held. The rules are fixed and simple. *Rises* and
# *falls* compare the last measurement with the first; *rises, then falls* means the highest point lies strictly
# inside the run and above both ends (a plateau with a tiny final dip passes, so read the drop beside the verdict).
# Each curve is then explained with A, K and G (lessons/NOTES.md §1). The world has two modes. In **easy** mode an
# answer is one fact sentence that the pretrained model mostly knows already. In **hard** mode every answer also
# carries a random story sentence, so there is content no model can predict, as in the paper's long answers. The
# contrast is the first lesson.
#
# Fast mode (`TINYLD_FAST=1`) uses two seeds with 400-step base models and 8 epochs; full mode 3000-step models and 20
# epochs, as `python -m tinyld sft-dynamics` does. The asserts check only what held in both.

# %%
import os

from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, claims_table, figure, judge, regime, setup, sft_run

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
OUT = os.environ.get("TINYLD_OUT", "tinyld_out/lessons")
SEEDS = [0, 1] if FAST else [0, 1, 2]  # fast mode: two seeds, to keep the test suite short
cfg = SFTDynamicsConfig(seeds=SEEDS, epochs=20, pretrain_steps=3000, fast=FAST, attribution=False)
print(f"SFT with {cfg.optimizer}, lr {cfg.lr:g}, batch {cfg.batch_size}, {cfg.epochs} epochs, base models pretrained "
      f"for {cfg.pretrain_steps} steps, seeds {SEEDS}")

# %% [markdown]
# ## The regime: where does log π(y⁺) start?
# `setup` loads (or pretrains and caches) the base model of each seed, builds the probe set of the 40 training
# prompts and 40 held-out prompts, and freezes y_init (the model's greedy answers). `regime` reports where SFT
# starts: log π(y⁺|x) per response and per token, how often y* ≠ y⁺ along y⁺, and the valley depth.

# %%
runs, regimes = {}, {}
for mode in ("easy", "hard"):
    runs[mode], regimes[mode] = [], []
    for seed in SEEDS:
        model, tok, probes, world = setup(cfg, seed, mode)
        regimes[mode].append(regime(model, tok, probes, world))
        runs[mode].append(sft_run(cfg, seed, mode, model, tok, probes, None))  # no world: no answer grading here
    r = regimes[mode]
    print(f"{mode:5s} log π(y⁺) at the start: " + ", ".join(f"{x['logp_chosen']:.1f}" for x in r) +
          " nats;  y* ≠ y⁺ at " + ", ".join(f"{x['ystar_differs']:.0%}" for x in r) + " of positions;  valley depth "
          + ", ".join(f"{x['valley_depth']:.1f}" for x in r) + " nats/token")
example = probes.probes[0]
print(f"\na hard-mode probe: {example.prompt!r}")
for fam in ("chosen", "rejected", "other_chosen", "random_tokens", "init"):
    print(f"  {fam:14s} {example.responses.get(fam, '(none)')}")

# %% [markdown]
# ## What the tracker measures, by hand once
# For one prompt: log π(y⁺|x) = Σ_m log π(y⁺_m | x, y⁺_<m), and y*'s log-prob along the same positions,
# Σ_m log max_v π(v | x, y⁺_<m) (teacher-forced: the prefix is always y⁺). Then the same two numbers from
# `Tracker`, which `sft_run` calls once per epoch for every prompt and family.

# %%
import torch  # noqa: E402

from tinyld.data import make_batch  # noqa: E402
from tinyld.probes import ProbeSet, Tracker  # noqa: E402

b = make_batch(tok, [example.prompt], [example.responses["chosen"]])
with torch.no_grad():
    logp = torch.log_softmax(model.eval()(b.idx), -1)[0]  # (T, V) log π at every position
y = b.targets[0][b.mask[0]]  # (M,) the tokens of y⁺ and EOS
at_y = logp[b.mask[0]].gather(-1, y[:, None])[:, 0]  # (M,) log π(y⁺_m)
by_hand = {"chosen": at_y.sum().item(), "star": logp[b.mask[0]].amax(-1).sum().item()}
tracked = {r["family"]: r["logp"] for r in Tracker(tok, ProbeSet([example]), valley=False).measure(model, 0)}
print(f"by hand: log π(y⁺) {by_hand['chosen']:.4f}, log π(y*) {by_hand['star']:.4f};  tracker: "
      f"{tracked['chosen']:.4f}, {tracked['star']:.4f}")
assert all(abs(by_hand[f] - tracked[f]) < 1e-4 for f in by_hand)
assert by_hand["star"] >= by_hand["chosen"]  # the argmax is at least as likely as y⁺ at every position

# %% [markdown]
# In easy mode log π(y⁺) starts a few nats below 0 and y* differs from y⁺ at only 6–15 % of the positions (fast
# mode, in our runs; 9 % on average in full mode): SFT has little left to do, and within an epoch or two it is
# done. In hard mode log π(y⁺) starts tens of nats below 0 (the tail), and y* differs from y⁺ at about half the
# positions. That is the paper's regime, where the curves have room to move.

# %% [markdown]
# ## Fig. 3 for your model, and the claims table
# One panel per family: the mean over the 40 training prompts (solid) and the 40 held-out prompts (dashed); the
# line is the mean over seeds, the band spans the seeds.

# %%
os.makedirs(OUT, exist_ok=True)
for mode in ("hard", "easy"):
    path = figure(runs[mode], f"{OUT}/06_fig3_{mode}.png", f"SFT, {mode} mode ({cfg.optimizer}, lr {cfg.lr:g})")
    print(f"figure: {path}")
claims = {mode: {c["claim"]: c for c in judge(runs[mode])} for mode in runs}
for mode in ("hard", "easy"):
    print(claims_table(list(claims[mode].values()), f"\nclaims, {mode} mode"))

# %% [markdown]
# ## Why each curve moves: A, K and G
# One SGD step changes log π(y|x_o) by −η Σ A·K·G over the positions of y (lessons/NOTES.md §1). G = (π − e_{y⁺})/B
# at each position of y_u⁺: it pushes the logit of y⁺'s token up and every other logit down, in proportion to π.
# K(χ_o, χ_u) says how much a push at χ_u = [x_u; y_u⁺] moves the logits at χ_o. A = I − 1πᵀ turns logit changes
# into log-prob changes, and conserves probability: what one token gains, the others lose. (The runs here use
# AdamW, which rescales the step; the direction of each push is still the one A·K·G describes, and lesson 7's
# attribution uses plain SGD, where the formula is exact to first order.)
#
# - **y_u⁺ rises**: observed at its own sequence, the label's row of A is e_y − π = −B·G, so its own contribution is
#   η·B·GᵀKG ≥ 0 (K is a Gram matrix). That holds for the whole sequence and for the example's own gradient; the
#   rest of the batch adds cross terms, which are small next to it here.
# - **Similar responses rise, then fall.** Early on, K between y_u⁻ (or a rephrase, or y_test⁺) and y_u⁺ is large:
#   they share most tokens and the same kind of context, so they ride along. In hard mode the story tail is learned
#   as "a story follows the fact", which raises every story-like response. But the gain at the shared tokens is
#   capped (log π ≤ 0) and stops once they are learned, while at the positions where the similar response differs
#   from y_u⁺, every step pushes y_u⁺'s token up and, through A, the similar response's token down. Once the gains
#   saturate only the losses remain, and the curve turns down.
# - **y_{j≠u}⁺ keeps rising**: training on (x_j, y_j⁺) raises y_j⁺ under x_j. Read under x_u, the same response
#   sees contexts [x_u; y_j⁺_<m] that differ from [x_j; y_j⁺_<m] only in the prompt, so K between them is large and
#   y_j⁺ rises under x_u too: the model learns to say B's answer to question A. Lesson 7 attributes this rise to the
#   training examples.
# - **Non-human text.** Where y⁺'s token is already the peak of π (easy mode), a step on it lowers every other
#   token, so shuffled and random words fall. Where y⁺'s token is unlikely and the mass sits elsewhere (hard mode's
#   tail: y* ≠ y⁺ at half the positions), a step on it lowers the peak most, and to first order every token with
#   π_i < ‖π‖² − π(y⁺) *rises* (lessons/NOTES.md §3, lesson 4). So in hard mode even random words rise for many
#   epochs. They fall once y⁺'s tokens have become the peaks.
# - **y*** is the argmax at each position of y⁺. As y⁺'s tokens become the argmax, y* and y⁺ coincide and
#   log π(y*) approaches 0 from below. In hard mode it first *dips* for several epochs: the same mechanism lowers
#   the old peak before y⁺'s token takes its place. With these settings the run ends before y* is back above its
#   start; a larger learning rate or gradient clipping brings it back within 20 epochs (the README's conditions).
#
# Read the table with that in mind: which claims held in both modes, and which only in hard mode?

# %%
for mode in ("hard", "easy"):
    print(f"{mode:5s}: " + ", ".join(f"{k} {c['held']}/{c['of']}" for k, c in claims[mode].items()))

# %% [markdown]
# ## What held in every run we made
# These hold for every seed in fast and full mode on our machine. The others are measured, not asserted. In the README's
# claims table (full mode) some hold only in hard mode, and "non-human text falls" holds in no seed of the hard mode; in
# fast mode it holds in some. In easy mode shuffled y⁺ falls in every seed, in fast and in full mode; random words and a
# shuffled unrelated sentence fall in every seed in fast mode but only in some in full mode. The bells of hard mode are
# asserted nowhere: in fast mode their final drops are a fraction of a nat.

# %%
for mode in ("hard", "easy"):
    assert claims[mode]["chosen rises"]["held"] == len(SEEDS), mode
assert claims["easy"]["rejected rises then falls"]["held"] == len(SEEDS)  # the bell of y_u⁻ in easy mode
assert claims["hard"]["other_chosen rises"]["held"] == len(SEEDS)  # y_{j≠u}⁺ rises in hard mode …
assert claims["hard"]["other_chosen ends above test_chosen"]["held"] == len(SEEDS)  # … more than y_test⁺
assert claims["easy"]["urnd_chosen falls"]["held"] == len(SEEDS)  # shuffled y⁺ falls in easy mode
assert claims["easy"]["star rises"]["held"] == len(SEEDS)  # y* rises in easy mode (in hard mode it dips first)
start = [x["logp_chosen"] for x in regimes["hard"]]
assert max(start) < min(x["logp_chosen"] for x in regimes["easy"]) - 10  # hard mode starts far lower

# %% [markdown]
# ## Exercises
# 1. Run `python -m tinyld sft-dynamics --fast --optimizer sgd --lr 1e-4` (or pass `optimizer="sgd", lr=1e-4` to
#    `sft_run`). Which claims change? The README's conditions table shows the sweep in full mode.
# 2. Track your own families, in the world's words: `probes.save("mine.jsonl")`, add a key (say `first`: a response
#    that shares only its first word with y⁺) to every line, then `mine = ProbeSet.load("mine.jsonl")` and
#    `sft_run(cfg, 0, "hard", model, tok, mine, None)` with the `model`, `tok` of `setup`. (On the command line,
#    `--probes` is for GPT-2-BPE models: it needs `--model`.) Does `first` rise?
# 3. y_init falls from the start in both modes instead of rising first. In hard mode it is a short, tail-less fact
#    ending in EOS ("tina lives in oslo ."), near its maximum at step 0. What does SFT in hard mode teach about the
#    token after "."? And which token does G push down hardest where y_init differs from y⁺?

# %%
print("lesson 6 OK")
