# %% [markdown]
# # Lesson 13 — Scaling up: data-parallel training, the fast path, and the decomposition at GPT-2 size
#
# *Paper: the one-step decomposition at GPT-2 size (124M), the scale of the paper's smallest models.*
#
# Everything so far ran one process on a tiny model. This lesson takes the three steps that carry the same code
# to GPT-2 small (124M) on several GPUs, and checks each one by hand on the CPU:
#
# 1. **Data parallelism.** N processes each take 1/N of every batch, compute their gradient, and average. When is
#    that average the gradient of the whole batch? We check it, and build a loss for which it is *not*.
# 2. **The fast path.** Fused attention computes the same function; bf16 autocast does not quite. How far is a
#    bf16 gradient from the float32 one?
# 3. **The decomposition at size.** The prediction −η·A·K·G over the full vocabulary costs a gradient and a JVP.
#    What does it cost next to a training step, and is it still right?
#
# Fast mode (`TINYLD_FAST=1`) measures step 3 on the `mini` preset; full mode on GPT-2 small with 256 tokens
# (about a minute on a 2-core CPU). `tinyld/experiments/README.md` ("More than one GPU") has similar figures
# measured on a GPU.

# %%
import copy
import os

import torch

from tinyld.bench import bench_decompose, bench_step
from tinyld.data import PairData
from tinyld.distributed import shard
from tinyld.losses import sft_loss, token_logprobs
from tinyld.model import GPT, GPTConfig
from tinyld.pretrained import pretrained

FAST = os.environ.get("TINYLD_FAST", "") not in ("", "0")
world, tok, base = pretrained(0, steps=400 if FAST else 3000)
model = copy.deepcopy(base).double()  # a float64 copy: the equalities below hold to rounding
data = PairData(tok, [it.example("train") for it in world.train_items()], 8, model.config.block_size, seed=0)
batch = data.batch(0)  # the global batch: 8 prompts with their responses
print(f"global batch: {batch.idx.shape[0]} sequences of {batch.idx.shape[1]} tokens")

# %% [markdown]
# ## 1. Two processes, one gradient
# `torchrun --nproc_per_node=2` starts two copies of the program. Each asks the data source for the same global
# batch and keeps its contiguous half (`tinyld.distributed.shard`). Each computes the gradient of the loss on its half;
# `DistributedDataParallel` then averages the two gradients, and both take the same step.
#
# The SFT loss is a mean over sequences: L = (1/B) Σ_i ℓ_i with ℓ_i = −log π(y_i|x_i). With two halves of B/2,
# (1/2)·[(2/B) Σ_{first half} ℓ_i + (2/B) Σ_{second half} ℓ_i] = L. So the average of the halves' gradients is the
# global gradient, exactly. We check it by computing all three gradients in this one process.

# %%
def grad_of(loss_fn, b):
    model.zero_grad()
    loss_fn(model(b.idx), b.targets).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).clone()


g_global = grad_of(sft_loss, batch)
g_ranks = [grad_of(sft_loss, shard(batch, rank, 2)) for rank in (0, 1)]
print("rank 0 holds rows", shard(batch, 0, 2).idx.shape[0], "· rank 1 holds rows", shard(batch, 1, 2).idx.shape[0])
err = ((g_ranks[0] + g_ranks[1]) / 2 - g_global).norm() / g_global.norm()
print(f"‖mean of the two ranks' gradients − global gradient‖ / ‖global‖ = {err:.1e}")
assert err < 1e-12

# %% [markdown]
# Now a loss that looks just as reasonable: the mean over *response tokens* of the whole batch,
# L' = Σ_tokens ℓ_t / (number of response tokens). Each rank divides by the tokens *it* holds. If the two halves
# hold different numbers of response tokens, the average of the two per-rank means weights the tokens of the
# half with fewer response tokens more, and the "global" step is not the global gradient any more.

# %%
def token_mean(logits, targets):
    mask = targets != -100
    return -(token_logprobs(logits, targets) * mask).sum() / mask.sum()


counts = [int((shard(batch, r, 2).targets != -100).sum()) for r in (0, 1)]
g_global_t = grad_of(token_mean, batch)
g_ranks_t = [grad_of(token_mean, shard(batch, r, 2)) for r in (0, 1)]
err_t = ((g_ranks_t[0] + g_ranks_t[1]) / 2 - g_global_t).norm() / g_global_t.norm()
print(f"response tokens per rank: {counts}")
print(f"token-mean loss: ‖mean of ranks − global‖ / ‖global‖ = {err_t:.1e}")
assert counts[0] != counts[1] and err_t > 1e-3

# %% [markdown]
# That is why tinyld's SFT and DPO losses are means over sequences (or pairs) with sums inside each sequence, and
# why the global batch must be divisible by N (every rank then holds equally many sequences). Pretraining windows
# all have `block_size` tokens, so there a token mean is safe. `tests/test_ddp.py` runs the real thing: two gloo
# processes under torchrun reach one process's weights within 1e-9.
#
# ## 2. The fast path: the same function, and almost the same gradient
# `model.use_fast()` switches attention to the fused `scaled_dot_product_attention`. It computes the same
# masked softmax, so in float64 the logits agree to rounding. On a GPU the Trainer also runs the forward pass in
# bf16 (8 significant bits, 7 of them stored: 2–3 decimal digits). Autocast works on the CPU too, so we can see
# its effect.

# %%
fast = GPT(GPTConfig.from_dict(model.config.to_dict())).double()
fast.load_state_dict(model.state_dict())
fast.use_fast()
with torch.no_grad():
    gap = (fast(batch.idx) - model(batch.idx)).abs().max().item()
print(f"fused vs explicit attention, float64: largest logit difference {gap:.1e}")
assert gap < 1e-10

m32 = copy.deepcopy(base).float()
g32 = torch.autograd.grad(sft_loss(m32(batch.idx), batch.targets), list(m32.parameters()))
with torch.autocast("cpu", dtype=torch.bfloat16):
    logits16 = m32(batch.idx)
g16 = torch.autograd.grad(sft_loss(logits16, batch.targets), list(m32.parameters()))
flat = lambda gs: torch.cat([g.float().flatten() for g in gs])  # noqa: E731
rel = ((flat(g16) - flat(g32)).norm() / flat(g32).norm()).item()
print(f"bf16 autocast vs float32: relative gradient error {rel:.1e}")
assert 1e-5 < rel < 0.1

# %% [markdown]
# A gradient off by a percent or so is fine for training: the weights and the optimizer state stay in float32,
# and the noise of a minibatch is larger. It is not fine for the dynamics engine, whose predictions are checked
# to a fraction of a percent. So the engine never autocasts, and the experiments' SGD attribution run trains in
# float32. On a CPU the fast path is fused attention only; here is one training step, plain and fast
# (`python -m tinyld bench step` prints the same JSON):

# %%
res = bench_step("tiny", vocab=tok.vocab_size, batch=8, seq=64, repeat=5, warmup=1)
print(f"{res['device']} ({res['threads']} threads), tiny, 8 × 64 tokens: plain {res['plain']['tokens_per_s']:,.0f} "
      f"tokens/s, fast {res['fast']['tokens_per_s']:,.0f} tokens/s ({res['speedup']:.2f}×)")
assert res["plain"]["tokens_per_s"] > 0 and res["fast"]["fused_attention"] and not res["fast"]["compiled"]

# %% [markdown]
# On a GPU the fast path adds bf16 and `torch.compile`, and the gain grows with the model and the sequence length:
# `tinyld/experiments/README.md` reports H100 figures for GPT-2 small.
#
# ## 3. The decomposition at GPT-2 size
# `bench_decompose` times one plain float32 AdamW training step and the engine's predicted Δ log π for every token
# of the vocabulary at every position of the same batch (one backward, one JVP, the softmax Jacobian A), then takes
# a real SGD step small enough that the largest predicted |Δ log π(y|x)| is 0.1 nats and compares. It uses a
# randomly initialised model and random tokens: a measurement of cost and of first order, not of a trained model.

# %%
preset, seq = ("mini", 128) if FAST else ("gpt2", 256)
dec = bench_decompose(preset, vocab=tok.vocab_size, batch=1, seq=seq, repeat=1, warmup=0)
print(f"{preset} ({dec['params']:,} parameters, V = {dec['vocab']:,}), {seq} tokens on {dec['device']}: "
      f"step {dec['step_ms']:.0f} ms, prediction {dec['predict_full_vocab_ms']:.0f} ms ({dec['ratio']:.1f}×)")
print(f"  relative error of the prediction: tokens {dec['rel_err_tokens']:.2%}, sequences "
      f"{dec['rel_err_sequences']:.2%}")
assert dec["rel_err_tokens"] < 0.05

# %% [markdown]
# At GPT-2 size the prediction costs a few plain float32 training steps (about 1.5 on this CPU, about 3 on a GPU);
# at `mini` size fixed overheads dominate and the ratio is larger. Either way it buys the change of every token's
# probability, and first order holds at this step size. The world experiments run at this size with
# `--model gpt2` (GPT-2 small pretrained on the world's text), on one GPU or, under torchrun, on several.
#
# ## Exercises
# 1. **Two ranks in float32.** Repeat the first check of section 1 with a float32 copy of the model
#    (`copy.deepcopy(base).float()`). Is the mean of the two ranks' gradients bit-equal to the global gradient? How
#    close is it, and why not bit-equal? (With torchrun, the same shows in a real run: compare the losses in
#    `two/demo.json` and `one/demo.json` after `torchrun --standalone --nproc_per_node=2 -m tinyld demo --fast
#    --threads 1 --out two` and `python -m tinyld demo --fast --threads 1 --out one`.)
# 2. In section 1, give rank 1 the first half as well (`shard(batch, 0, 2)` for both). The two ranks then agree
#    with each other. Which check fails, and what would training under torchrun silently do?
# 3. Make the token-mean loss safe for data parallelism: have each rank divide its token sum by (global number of
#    response tokens) / N, where the global count comes from an all-reduce (here: `sum(counts)`), and check the
#    average again.
#
# Check your answers with `python lessons/exercises/13_scaling_up.py`: it simulates the ranks in one process and
# asks for the quantities behind these questions (the gradient the ranks agree on, the weight each sequence gets
# in it, the safe token-mean loss), compares each with an independent computation, and prints a hint on a miss.
# Worked solutions: `lessons/solutions/13_scaling_up.py`.

# %%
print("lesson 13 OK")
