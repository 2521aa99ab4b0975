"""Benchmarks that print JSON (``python -m tinyld bench step|decompose``). Timings are medians of repeats, and
every result names the device it was measured on."""
from __future__ import annotations

import resource
import statistics
import time

import torch

from tinyld.choose import load_real, model_choice
from tinyld.data import Batch
from tinyld.dynamics import one_step, sequence_change, step_size_for
from tinyld.kernel import predict
from tinyld.losses import sft_loss
from tinyld.model import GPT, PRESETS, GPTConfig
from tinyld.runtime import TinyldError, check_choice, check_int, check_number, pick_device
from tinyld.train import TrainConfig, Trainer, make_optimizer
from tinyld.updates import SFTUpdate, lm_rows


def _own_vocab(preset: str) -> bool:
    """gpt2 and smollm2 carry their tokenizer's vocabulary; tiny and mini take --vocab."""
    return "vocab_size" in PRESETS[preset]


def _check_args(preset, vocab, batch, seq, repeat, warmup, eta=None, model=None) -> None:
    """Every benchmark argument, checked before a model is built."""
    check_choice("bench --model", preset, PRESETS)
    if model is not None and model_choice(model, "bench").preset != preset:
        raise TinyldError(f"bench: the weights of {model} are not those of a {preset} model")
    check_int("bench --vocab", vocab, 2, 1_000_000)
    check_int("bench --batch", batch, 1, 4096)
    check_int("bench --seq", seq, 1, 8192)
    check_int("bench --repeat", repeat, 1, 10_000)
    check_int("bench --warmup", warmup, 0, 10_000)
    if eta is not None:
        check_number("bench --eta", eta, 0, strict=True)
    context = GPTConfig.preset(preset, **({} if _own_vocab(preset) else {"vocab_size": vocab})).block_size
    if seq > context:  # a longer context would be another model than the preset the result names
        longer = ", ".join(f"{n} {GPTConfig.preset(n, vocab_size=50257).block_size}" for n in PRESETS if n != preset)
        raise TinyldError(f"bench --seq {seq}: the {preset} preset's context is {context} tokens; give --seq {context} "
                          f"or less, or a preset with a longer context ({longer})")


def _setup(preset: str, vocab: int, batch: int, seq: int, device: str, dtype=torch.float32, fast: bool = False,
           source: str | None = None):
    """The model (random weights, or a GGUF file's when ``source`` is given) and a batch of random tokens."""
    dev = pick_device(device)
    torch.manual_seed(0)
    if source is not None:
        model, _ = load_real(model_choice(source, "bench"), fast=fast)
        model, cfg = model.to(dev.device, dtype), model.config
    else:
        cfg = GPTConfig.preset(preset, fast=fast, **({} if _own_vocab(preset) else {"vocab_size": vocab}))
        model = GPT(cfg).to(dev.device, dtype)
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=dev.device)
    return dev, model, Batch(x[:, :-1], x[:, 1:])  # every position scored: "the same tokens" for both


class _Fixed:
    """A data source that serves the same batch at every step."""

    def __init__(self, batch: Batch):
        self.b, self.batch_size = batch, batch.idx.shape[0]

    def batch(self, step: int) -> Batch:
        return self.b


def _time(fn, repeat: int, warmup: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def bench_step(preset="tiny", vocab=128, batch=8, seq=64, device="cpu", repeat=10, warmup=2,
               model: str | None = None) -> dict:
    """One training step of the Trainer (forward, backward, clipping, AdamW; next-token loss on every position),
    on the plain path and on the fast path, with tokens per second for each.

    Plain: float32, attention written out. Fast (``GPTConfig.fast``): fused attention everywhere; on a GPU also bf16
    autocast and ``torch.compile`` (compiled during the warm-up steps). The result names the device it ran on.
    ``model``: weights that replace the random ones: a GGUF source (``"smollm2"`` or a path; preset smollm2) or a
    Hugging Face GPT-2 folder (preset gpt2)."""
    _check_args(preset, vocab, batch, seq, repeat, warmup, model=model)
    res = {"bench": "step", "preset": preset, "weights": model or "random", "batch": batch, "seq": seq,
           "tokens_per_step": batch * seq}
    source = model
    for path in ("plain", "fast"):
        dev, model, b = _setup(preset, vocab, batch, seq, device, fast=path == "fast", source=source)
        tc = TrainConfig(task="pretrain", optimizer="adamw", lr=1e-4, grad_clip=1.0, progress=False)
        trainer = Trainer(model, _Fixed(b), tc, compile=path == "fast")
        s = _time(trainer.train_step, repeat, warmup, dev.device)
        cuda = dev.device.type == "cuda"
        res[path] = {"ms_per_step": round(s * 1e3, 2), "tokens_per_s": round(batch * seq / s, 1),
                     "fused_attention": path == "fast", "bf16_autocast": trainer.fast, "compiled": trainer.fast}
        res.update(params=model.num_params(), device=str(dev.device), device_name=_device_name(dev.device),
                   threads=torch.get_num_threads())
        del trainer, model
        if cuda:
            torch.cuda.empty_cache()
    res["speedup"] = round(res["fast"]["tokens_per_s"] / res["plain"]["tokens_per_s"], 2)
    first = ("bench", "preset", "weights", "params", "device", "device_name", "threads")
    return {**{k: res[k] for k in first}, **{k: v for k, v in res.items() if k not in first}}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"


def bench_decompose(preset="tiny", vocab=128, batch=8, seq=64, device="cpu", repeat=5, warmup=1,
                    eta: float | None = None, model: str | None = None) -> dict:
    """Time of one training step vs the predicted full-vocabulary Δ log π (gradient + JVP + A) on the same
    tokens, the ratio, peak memory and the relative error of the prediction for one small SGD step.

    Two steps are timed: the bare step (forward, backward, AdamW: ``ratio``) and the Trainer's (which also clips
    the gradient and checks the loss and weights for NaN: ``ratio_trainer``).

    eta=None picks the step from the prediction itself: the largest predicted |Δ log π(y|x)| is 0.1 nats.
    ``model``: weights that replace the random ones: a GGUF source (``"smollm2"`` or a path; preset smollm2) or a
    Hugging Face GPT-2 folder (preset gpt2)."""
    _check_args(preset, vocab, batch, seq, repeat, warmup, eta, model)
    weights = model or "random"
    dev, model, b = _setup(preset, vocab, batch, seq, device, source=model)
    model.eval()
    opt = make_optimizer(model, TrainConfig(optimizer="adamw"))
    rows = lm_rows(b)
    update = SFTUpdate(rows)

    def step():
        opt.zero_grad(set_to_none=True)
        sft_loss(model(b.idx), b.targets).backward()
        opt.step()

    def decompose():
        d = predict(model, rows, update, eta or 1.0)  # (N, V) full vocabulary at every position
        return sequence_change(rows, d)  # (B,) reduced on the device

    if dev.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    t_step = _time(step, repeat, warmup, dev.device)
    peak_step = _peak_mb(dev.device)
    trainer = Trainer(model, _Fixed(b), TrainConfig(task="sft", optimizer="adamw", lr=1e-4, grad_clip=1.0,
                                                    progress=False))
    t_trainer = _time(trainer.train_step, repeat, warmup, dev.device)
    model.load_state_dict(theta0)  # the timed steps moved the weights: the prediction is timed and checked at θ₀
    del theta0, trainer
    model.eval()
    if dev.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_dec = _time(decompose, repeat, warmup, dev.device)
    peak_dec = _peak_mb(dev.device)
    eta = eta or step_size_for(model, update, rows, 0.1)
    rep = one_step(model, update, rows, eta, keep_full=False)
    return {"bench": "decompose", "preset": preset, "weights": weights, "params": model.num_params(),
            "vocab": model.config.vocab_size,
            "batch": batch, "seq": seq, "device": str(dev.device), "device_name": _device_name(dev.device),
            "threads": torch.get_num_threads(),
            "step_ms": round(t_step * 1e3, 2), "predict_full_vocab_ms": round(t_dec * 1e3, 2),
            "ratio": round(t_dec / t_step, 3), "trainer_step_ms": round(t_trainer * 1e3, 2),
            "ratio_trainer": round(t_dec / t_trainer, 3), "peak_mb_step": round(peak_step, 1),
            "peak_mb_predict": round(peak_dec, 1), "eta": eta, "rel_err_tokens": rep.err_tokens,
            "rel_err_sequences": rep.err_seq}
