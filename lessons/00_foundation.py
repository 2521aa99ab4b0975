# %% [markdown]
# # Lesson 0 — A tour of the foundation: world, tokenizers, GPT, training
#
# *Paper: the setting of its experiments (a pretrained model, then finetuning) and valley depth.*
#
# Before we measure how finetuning moves a model, we need a model that behaves like a pretrained LLM. It should
# be confident on the text it knows and put almost no probability on text it does not expect. This lesson
# builds one in about 1.5 minutes on a 2-core CPU (about 15 seconds in fast mode) and checks what it learned.

# %%
import os
import tempfile

import torch

from tinyld import GPT, GPTConfig
from tinyld.data import PairData, TextStream
from tinyld.evaluate import greedy_answers, response_logprobs, text_stats, valley_depth
from tinyld.pretrained import pretrained
from tinyld.tokenizers import GPT2BPE
from tinyld.train import TrainConfig, Trainer

# ---- knobs -------------------------------------------------------------------------------------------
FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
PRETRAIN_STEPS = 400 if FAST else 3000  # AdamW, lr 0.02, cosine; cached in tinyld_out/cache
SFT_STEPS = 30  # AdamW, lr 1e-3, 8 prompts per batch

# %% [markdown]
# ## The synthetic world
# A seeded world of people and their facts. It writes three things: pretraining text (biographies, some Q&A
# pages, stories), instruction prompts with a correct and a plausible wrong answer, and held-out prompts.

# %%
world, tok, model = pretrained(seed=0, steps=PRETRAIN_STEPS)
docs = world.pretrain_docs()
item = world.train_items()[0]
print("a pretraining document:", docs[0])
print("an instruction prompt: ", item.prompt, "→", item.chosen, "   (wrong:", item.rejected + ")")
print("its probe families:")
for k, v in world.probes(item).items():
    print(f"   {k:14s} {v}")

# %% [markdown]
# ## Two tokenizers, one protocol
# The world's texts are lower-case words. A word-level tokenizer gives each word one id, and GPT-2's BPE splits
# the same text into sub-words. Both have `encode`, `decode`, `vocab_size` and `eos_id`.

# %%
bpe = GPT2BPE()
for t in (tok, bpe):
    ids = t.encode(item.chosen)
    print(f"{t.name:9s} V={t.vocab_size:6d}  {item.chosen!r} → {ids}  → {t.decode(ids)!r}")
    assert t.decode(ids) == item.chosen

# %% [markdown]
# ## The GPT is causal
# Position t sees tokens ≤ t only. Changing a later token must leave every earlier logit unchanged.

# %%
x = torch.tensor([tok.encode(item.prompt + " " + item.chosen)])  # (1, T)
y = x.clone()
y[0, -1] = tok.encode("zoe")[0]
with torch.no_grad():
    same = torch.equal(model(x)[0, :-1], model(y)[0, :-1])
print(f"tiny GPT: {model.num_params():,} parameters; earlier logits unchanged by a later token: {same}")
assert same

# %% [markdown]
# ## What pretraining gave us: confidence and deep valleys
# On held-out world text the model is confident. On random word sequences it is *very* sure they are wrong.
# The mean log-prob per token of random text is the model's *valley depth*. Why measure it? The squeezing
# effect of DPO (lessons/NOTES.md §3) holds for any model, but its strength depends on how unlikely the
# rejected response is, so valley depth is reported beside every squeezing result. Whether deeper valleys make
# squeezing *more visible* is an open question here: earlier small-scale trials suggested so, but this
# project's own conditions run (`dpo-dynamics --experiment conditions`) found squeezing in every form under the
# *shallowest* valleys, with valley depth confounded with how far training moved the model (NOTES §5).
# The 400-step model of fast mode is much shallower than the 3000-step model of full mode: compare them.

# %%
stats = text_stats(model, tok, world.heldout_text())
valley = valley_depth(model, tok)
print(f"held-out world text: mean top-1 probability {stats['top1']:.3f}, {stats['logp_per_token']:.2f} nats/token")
print(f"random words (valley depth): {valley:.1f} nats/token; a uniform guess would be "
      f"{-torch.log(torch.tensor(tok.vocab_size - 3.0)).item():.1f}")
assert stats["top1"] > 0.8 and valley < stats["logp_per_token"] - 5

# %% [markdown]
# ## SFT: learn to answer
# SFT masks the prompt and maximises the summed log-prob of the response.

# %%
items = world.train_items()
before = response_logprobs(model, tok, [i.prompt for i in items], [i.chosen for i in items]).mean().item()
data = PairData(tok, [i.example() for i in items], batch_size=8, block_size=model.config.block_size)
Trainer(model, data, TrainConfig(task="sft", steps=SFT_STEPS, lr=1e-3, log_every=10, progress=False), tok).run()
after = response_logprobs(model, tok, [i.prompt for i in items], [i.chosen for i in items]).mean().item()
print(f"mean log π(y⁺|x) on the training prompts: {before:.2f} → {after:.2f}")
test = world.test_items()[:3]
for i, a in zip(test, greedy_answers(model, tok, [i.prompt for i in test])):
    print(f"   {i.prompt} → {a}   (correct: {i.chosen})")
assert after > before

# %% [markdown]
# ## Checkpoints resume exactly
# The batch at step s depends only on (seed, s), and a checkpoint stores the optimizer state and the RNG. So
# 10 steps in one go equal 5 steps, a save, a new Trainer built from the file, and 5 more steps.

# %%
def fresh():
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size))


stream = TextStream(tok, docs, block_size=64, batch_size=8, seed=0)
one_go = Trainer(fresh(), stream, TrainConfig(steps=10, progress=False), tok)
one_go.run()
with tempfile.TemporaryDirectory() as d:
    Trainer(fresh(), stream, TrainConfig(steps=5, out_dir=d, progress=False), tok).run()
    resumed = Trainer.resume(f"{d}/last.pt", stream, tok, steps=10)
    resumed.run()
same = all(torch.equal(a, b) for a, b in zip(one_go.model.parameters(), resumed.model.parameters()))
print("resumed run equals the uninterrupted run, bit for bit:", same)
assert same

# %% [markdown]
# ## Recap
# * The world is deterministic given its seed. Its texts work with both tokenizers, and it derives the probe
#   families (lessons/NOTES.md §4) that lesson 4 observes.
# * The pretrained tiny GPT is confident on its world and has deep valleys on random text.
# * SFT raises log π(y⁺|x). Training resumes exactly from a checkpoint.
#
# ## Exercises
# 1. **Valley depth vs pretraining length.** Compute the valley depth by hand: the mean log π of random token
#    sequences, each token scored by the logits of the position before it. Predict first: does less pretraining
#    give a deeper or a shallower valley? Compare a fresh `GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size))`
#    (0 steps) and `pretrained(seed=0, steps=100)` with `valley` above (a shallower valley is a larger, less
#    negative number).
# 2. **Causality from the other side.** Change the *first* response token of `x` instead of the last. Which
#    logits must stay equal now? Find the `k` for which `torch.equal(model(x)[0, :k], model(y)[0, :k])` must hold.
# 3. **Resume from another step.** Save after 3 steps instead of 5 and resume. The bit-for-bit `same` check above
#    must still pass: what does the checkpoint hold that makes the break invisible?
#
# Check your answers with `python lessons/exercises/00_foundation.py`: it asks for the quantities behind these
# questions (the valley depth, the `k`, the weights after a save at step 3 and a resume to step 5), compares each
# with an independent computation, and prints a hint on a miss. Worked solutions: `lessons/solutions/00_foundation.py`.

# %%
print("lesson 0 OK")
