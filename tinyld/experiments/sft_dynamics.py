"""What SFT does to every other answer (paper §4, Fig. 3), why the model answers question A with B's answer, and
which training example pushed each curve.

``python -m tinyld sft-dynamics`` finetunes the pretrained world model on the training prompts for several epochs,
over ≥ 3 seeds and in both world modes (``hard``: long answers with a free-form tail, the paper's regime;
``easy``: one known fact per answer). Along the way it

1. tracks log π(y|x) of every probe family on the training prompts (D_prob) and held-out prompts (D_probtest)
   with :class:`tinyld.probes.Tracker`;
2. classifies greedy answers after every epoch (:meth:`tinyld.world.World.classify`): correct, wrong value,
   another training question's answer, other;
3. attributes the accumulated change of y_{j≠u}⁺ under x_u to the training examples, in a plain-SGD run where the
   engine's per-example prediction −η·A·K·G_j is exact to first order (:func:`tinyld.dynamics.contributions`);
4. evaluates the paper's claims per seed and writes a claims table, the JSON, the tracker tables and the figures.

``--conditions`` adds the sweep over optimizer, learning rate and pretraining depth (valley depth).
``--probes FILE --model M`` runs the same tracking on your own probe JSONL with the GPT-2 BPE (no world: no
answer classification).
"""
from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tinyld.data import PairData, make_batch
from tinyld.distributed import is_main
from tinyld.dynamics import contributions
from tinyld.evaluate import greedy_answers, response_logprobs, valley_depth
from tinyld.experiments.common import (add_claim, check_base_model, check_shared, figure, plain_json, regime, summary,
                                       world_base)
from tinyld.experiments.common import claims_table as shared_claims_table
from tinyld.model import GPT, PRESETS, GPTConfig
from tinyld.probes import FAMILIES, ProbeSet, Tracker
from tinyld.runtime import (TinyldError, TrainingDiverged, check_choice, check_int, check_number, num_threads,
                            pick_device, versions, writable_dir, write_text_atomic)
from tinyld.tokenizers import GPT2BPE
from tinyld.train import OPTIMIZERS, TrainConfig, Trainer
from tinyld.updates import SFTUpdate, lm_rows
from tinyld.world import ANSWER_KINDS, MODES, World

SIMILAR = ("rejected", "gpts_chosen", "gpts_rejected", "init", "test_chosen")  # "rise first, then fall"
NON_HUMAN = ("urnd_chosen", "rnd", "random_tokens")  # "fall"


@dataclass
class SFTDynamicsConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # world, init and data order
    modes: list[str] = field(default_factory=lambda: ["hard", "easy"])  # world modes (tinyld.world)
    epochs: int = 20  # passes over the training prompts
    optimizer: str = "adamw"  # sgd | adamw | rmsprop
    lr: float = 1e-3  # constant learning rate, no warm-up
    batch_size: int = 8  # prompts per step (40 training prompts: 5 steps per epoch)
    grad_clip: float = 0.0  # global gradient-norm clipping of the SFT runs (0: none, as the first-order picture)
    every: int = 0  # steps between measurements (0: once per epoch)
    pretrain_steps: int | None = None  # of the base model (tinyld.pretrained.pretrained, cached): 3000 tiny, 1000 gpt2
    preset: str | None = None  # the base model: tiny (default; the world's words) or gpt2 (GPT-2 small, BPE)
    hf: str | None = None  # a local Hugging Face GPT-2 folder to start the gpt2 pretraining from (GPT.from_hf)
    attribution: bool = True  # the SGD attribution run (first mode; in fast mode first seed only)
    attr_lr: float = 1e-4  # its plain-SGD learning rate (no clipping, no momentum): small, so first order holds
    attr_prompts: int = 4  # training prompts u whose y_{j≠u}⁺ is attributed
    conditions: bool = False  # also run the sweep over optimizer, lr and pretraining depth
    probes: str | None = None  # a probe JSONL (then --model): your own data with the GPT-2 BPE
    model: str | None = None  # with --probes: a Hugging Face GPT-2 folder, or a preset name (random init)
    out: str = "tinyld_out/sft_dynamics"
    device: str | None = None  # auto | cpu | cuda | mps (None: cpu for tiny, where it is quickest; auto for gpt2)
    threads: int = 2  # CPU threads (pinned: the figures in the README were made with 2)
    fast: bool = False  # fewer epochs and a shallower base model: ≤ 60 s, the numbers then mean less

    def __post_init__(self):
        check_base_model(self, "sft-dynamics")
        check_shared(self, "sft-dynamics")
        if isinstance(self.modes, str) or not isinstance(self.modes, (list, tuple)) or not self.modes:
            raise TinyldError(f"sft-dynamics --modes must be a non-empty list of {' / '.join(MODES)}, got "
                              f"{self.modes!r}")
        self.modes = [check_choice("sft-dynamics --modes", m, MODES) for m in self.modes]
        if len(set(self.modes)) != len(self.modes):
            raise TinyldError(f"sft-dynamics --modes repeats a mode: {self.modes}")
        for name in ("attribution", "conditions", "fast"):
            if not isinstance(getattr(self, name), bool):
                raise TinyldError(f"SFTDynamicsConfig.{name} must be True or False, got {getattr(self, name)!r}")
        self.epochs = check_int("sft-dynamics --epochs", self.epochs, 1, 10_000)
        check_choice("sft-dynamics --optimizer", self.optimizer, OPTIMIZERS)
        self.lr = check_number("sft-dynamics --lr", self.lr, 0, strict=True)
        self.batch_size = check_int("sft-dynamics --batch-size", self.batch_size, 1)
        self.grad_clip = check_number("sft-dynamics --grad-clip", self.grad_clip, 0)
        self.every = check_int("sft-dynamics --every", self.every, 0)
        self.attr_lr = check_number("sft-dynamics --attr-lr", self.attr_lr, 0, strict=True)
        self.attr_prompts = check_int("sft-dynamics --attr-prompts", self.attr_prompts, 1)
        if self.probes is not None and (self.preset not in (None, "tiny") or self.hf is not None):
            raise TinyldError("sft-dynamics: your own --probes take their model from --model (a Hugging Face GPT-2 "
                              "folder or a preset); --preset and --hf choose the world's base model")
        if (self.probes is None) != (self.model is None):
            raise TinyldError("sft-dynamics: --probes FILE and --model M go together (your own probes need a "
                              "model and the GPT-2 BPE; the world's probes use the world's pretrained model)")
        if self.fast:
            self.epochs, self.pretrain_steps = min(self.epochs, 8), min(self.pretrain_steps, 400)


# --------------------------------------------------------------------------------------------------------------
# one SFT run with the tracker
# --------------------------------------------------------------------------------------------------------------


def setup(cfg: SFTDynamicsConfig, seed: int, mode: str):
    """(model, tokenizer, probes with y_init, world or None) for one seed and world mode (under torchrun the ranks
    other than 0 get no y_init: only rank 0 measures)."""
    if cfg.probes is not None:
        return _user_setup(cfg, seed)
    model, tok, world = world_base(cfg, seed, mode)
    probes = ProbeSet.from_world(world)
    return model, tok, probes.with_init(model, tok) if is_main() else probes, world  # y_init: a measurement


def _user_setup(cfg: SFTDynamicsConfig, seed: int):
    probes = ProbeSet.load(cfg.probes)
    tok = GPT2BPE()
    if cfg.model in PRESETS:
        torch.manual_seed(seed)
        model = GPT(GPTConfig.preset(cfg.model, vocab_size=tok.vocab_size))  # random init: says nothing of GPT-2
    elif Path(cfg.model).is_dir():
        model = GPT.from_hf(cfg.model)
    else:
        raise TinyldError(f"sft-dynamics --model {cfg.model!r} is neither a preset ({', '.join(PRESETS)}) nor a "
                          "folder with a Hugging Face GPT-2 checkpoint")
    if model.config.vocab_size != tok.vocab_size:
        raise TinyldError(f"the model's vocab_size is {model.config.vocab_size}, the GPT-2 BPE has "
                          f"{tok.vocab_size}: give a GPT-2 model")
    probes.check_fits(tok, model.config.block_size)
    if cfg.model in PRESETS and seed == cfg.seeds[0]:
        print(f"  note: --model {cfg.model} is a randomly initialised {cfg.model!r} GPT (seed {seed}), not trained "
              "weights: its curves say nothing about a pretrained model")
    model = model.to(pick_device(cfg.device).device)
    return model.eval(), tok, probes.with_init(model, tok) if is_main() else probes, None


def sft_run(cfg: SFTDynamicsConfig, seed: int, mode: str, model, tok, probes: ProbeSet, world: World | None,
            optimizer: str | None = None, lr: float | None = None, out: Path | None = None) -> dict:
    """SFT on the training split with the tracker (and, given a world, classified answers after every epoch).
    Under torchrun the ranks other than 0 only train (and return ``{}``): rank 0 alone measures."""
    model = copy.deepcopy(model)
    examples = probes.examples("train")
    data = PairData(tok, examples, cfg.batch_size, model.config.block_size, seed)
    spe = data.batches_per_epoch
    steps = cfg.epochs * spe
    every = cfg.every or spe
    tc = TrainConfig(task="sft", steps=steps, optimizer=optimizer or cfg.optimizer, lr=lr or cfg.lr, seed=seed,
                     grad_clip=cfg.grad_clip, log_every=spe, progress=False)

    def train(callback=None):
        try:
            return Trainer(model, data, tc, tok).run(callback)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"SFT ({tc.optimizer}, seed {seed}, {mode}) diverged: lower --lr (now {tc.lr:g})"
                                   f" or set --grad-clip ({e})") from None

    if not is_main():
        train()
        return {}
    tracker = Tracker(tok, probes, every=every)
    gens = {"epochs": [], "counts": {"train": [], "test": []}, "examples": []}
    gen_s = [0.0]
    if world is not None:  # fixed for the run: the world's items by prompt, and how long an answer may be
        items = {it.prompt: it for it in world.train_items() + world.test_items()}
        max_new = max(len(tok.encode(p.responses["chosen"])) for p in probes.probes) + 4

    def generations(m, step):
        t = time.perf_counter()
        answers = greedy_answers(m, tok, [p.prompt for p in probes.probes], max_new)
        gens["epochs"].append(step // spe)
        kinds = [world.classify(items[p.prompt], a) for p, a in zip(probes.probes, answers)]
        for split in ("train", "test"):
            ks = [k for p, k in zip(probes.probes, kinds) if p.split == split]
            gens["counts"][split].append({k: ks.count(k) for k in ANSWER_KINDS})
        gens["examples"].append([{"prompt": p.prompt, "answer": a, "split": p.split} for p, a, k in
                                 zip(probes.probes, answers, kinds) if k == "other_question"][:4])
        gen_s[0] += time.perf_counter() - t

    def callback(trainer, step):
        tracker(trainer, step)
        if world is not None and step % spe == 0:
            generations(trainer.model, step)

    tracker.measure(model, 0)
    if world is not None:
        generations(model, 0)
    before = tracker.seconds + gen_s[0]  # step 0's measurements, taken before the clock starts
    t0 = time.perf_counter()
    hist = train(callback)
    train_s = time.perf_counter() - t0 - (tracker.seconds + gen_s[0] - before)
    run = {"seed": seed, "mode": mode, "optimizer": tc.optimizer, "lr": tc.lr, "steps": steps,
           "steps_per_epoch": spe, "every": every, "loss": [r["loss"] for r in hist],
           "curves": {split: {f: tracker.curve(f, split)[1] for f in probes.families} for split in ("train", "test")},
           "measured_steps": tracker.curve("chosen", "train")[0],
           "valley_depth": [r["valley_depth"] for r in tracker.steps],
           "top1_chosen": tracker.curve("chosen", "train", "top1")[1],
           "peakiness_chosen": tracker.curve("chosen", "train", "peakiness")[1],
           "seconds": {"train": train_s, "tracker": tracker.seconds, "generations": gen_s[0]},
           "tracker_cost": tracker.seconds / max(train_s, 1e-9)}
    if world is not None:
        run["generations"] = gens
    if out is not None:
        tracker.save(out / f"track_{mode}_seed{seed}.csv")
    return run


# --------------------------------------------------------------------------------------------------------------
# attribution: which training example raised y_{j≠u}⁺ under x_u
# --------------------------------------------------------------------------------------------------------------


def attribution(cfg: SFTDynamicsConfig, seed: int, model, tok, probes: ProbeSet) -> dict:
    """Plain SGD at ``cfg.attr_lr`` (no clipping, no momentum). Before every step, the engine's per-example
    prediction (:func:`~tinyld.dynamics.contributions`) for the observed sequences; after it, the actual log π.
    Observed: for the first ``attr_prompts`` training prompts u, y_{j≠u}⁺ and y_u⁺ under x_u (columns 2k, 2k+1).
    ``r2``, ``final_rel_err`` and the two curves are about the y_{j≠u}⁺ columns: summed predictions vs actual.
    Under torchrun the ranks other than 0 only train (and return ``{}``)."""
    model = copy.deepcopy(model).use_fast(False)  # float32 steps: the first-order comparison is exact to rounding
    train = probes.split("train")
    examples = probes.examples("train")
    data = PairData(tok, examples, cfg.batch_size, model.config.block_size, seed)
    steps = cfg.epochs * data.batches_per_epoch
    us = train[: min(cfg.attr_prompts, len(train))]
    fam = "other_chosen" if "other_chosen" in probes.families else "chosen"
    obs_p = [p.prompt for p in us for _ in (fam, "chosen")]
    obs_y = [p.responses[f] for p in us for f in (fam, "chosen")]
    dev = next(model.parameters()).device
    obs = make_batch(tok, obs_p, obs_y, model.config.block_size).to(dev)
    rows = lm_rows(obs)
    n_ex, n_obs = len(examples), len(obs_y)
    pred = torch.zeros(n_ex, n_obs, dtype=torch.float64)  # Σ_t predicted Δ log π(obs) due to example j
    main = is_main()
    actual = [response_logprobs(model, tok, obs_p, obs_y).double()] if main else []
    pred_total = torch.zeros(n_obs, dtype=torch.float64)
    pred_curves = [pred_total.clone()]

    def before(step):  # the prediction at θ_step for the batch about to be applied
        b = data.batch(step).to(dev)
        c = contributions(model, SFTUpdate(lm_rows(b)), rows, cfg.attr_lr).double().cpu()  # (B, n_obs)
        for r, j in enumerate(data.indices(step)):
            pred[j] += c[r]
        pred_total.add_(c.sum(0))

    def callback(trainer, step):
        actual.append(response_logprobs(trainer.model, tok, obs_p, obs_y).double())
        pred_curves.append(pred_total.clone())
        if step < steps:
            before(step)

    tc = TrainConfig(task="sft", steps=steps, optimizer="sgd", lr=cfg.attr_lr, grad_clip=0.0, seed=seed,
                     log_every=steps, progress=False)
    t0 = time.perf_counter()
    try:
        if main:
            before(0)
        Trainer(model, data, tc, tok).run(callback if main else None)
    except TinyldError as e:  # TrainingDiverged too
        raise TinyldError(f"the attribution run (SGD, seed {seed}) failed at --attr-lr {cfg.attr_lr:g}: lower it, so "
                          f"that one step moves log-probs by a fraction of a nat ({e})") from None
    if not main:
        return {}
    act = torch.stack(actual) - actual[0]  # (steps+1, n_obs) accumulated actual change
    prd = torch.stack(pred_curves)  # (steps+1, n_obs) accumulated predicted change
    per_probe = attributed_probes(train, us, fam, pred, act)
    r2, rel = first_order_fit(act[:, 0::2], prd[:, 0::2])
    return {"seed": seed, "optimizer": "sgd", "lr": cfg.attr_lr, "steps": steps, "family": fam,
            "probes": per_probe, "per_example": pred.tolist(), "observed": list(zip(obs_p, obs_y)),
            "seconds": time.perf_counter() - t0,
            "curve_actual": act[:, 0::2].mean(1).tolist(), "curve_predicted": prd[:, 0::2].mean(1).tolist(),
            "r2": r2, "final_rel_err": rel}


def attributed_probes(train: list, us: list, fam: str, pred: torch.Tensor, act: torch.Tensor) -> list[dict]:
    """Per observed prompt u (``us``, the first of the training probes ``train``): the actual and predicted change of
    y_{j≠u}⁺ under x_u, split into the share of the example j whose answer it is, of u itself and of the rest, the top
    contributor, and the same totals for y_u⁺. ``pred``: (examples, observed) summed predictions; ``act``: (steps+1,
    observed) accumulated actual change; observed columns 2k (``fam``) and 2k + 1 (y_u⁺)."""
    prompt_index = {p.prompt: k for k, p in enumerate(train)}
    chosen_index = {p.responses["chosen"]: k for k, p in enumerate(train)}
    per_probe = []
    for k, p in enumerate(us):
        o = 2 * k  # the y_{j≠u}⁺ column; 2k + 1 is y_u⁺
        u = prompt_index[p.prompt]
        j = chosen_index.get(p.responses[fam])
        j = None if j == u else j  # observing y_u⁺ itself: no other example j
        col = pred[:, o]
        per_probe.append({"prompt": p.prompt, "response": p.responses[fam], "u": u, "j": j,
                          "actual": act[-1, o].item(), "predicted": col.sum().item(),
                          "from_j": col[j].item() if j is not None else None, "from_u": col[u].item(),
                          "from_rest": (col.sum() - (col[j] if j is not None else 0) - col[u]).item(),
                          "top_example": int(col.argmax()), "top_is_j": j is not None and int(col.argmax()) == j,
                          "chosen_actual": act[-1, o + 1].item(), "chosen_predicted": pred[:, o + 1].sum().item()})
    return per_probe


def first_order_fit(act: torch.Tensor, prd: torch.Tensor) -> tuple[float | None, float | None]:
    """(R², final relative error) of the summed predictions ``prd`` against the actual changes ``act``, both
    (steps+1, columns) accumulated from step 0: R² over every step after the first, the relative error of the last
    step's vector. None where the actual change is flat (R²) or zero (relative error)."""
    a, pr = act[1:].flatten(), prd[1:].flatten()
    ss = ((a - a.mean()) ** 2).sum()
    r2 = (1 - ((a - pr) ** 2).sum() / ss).item() if ss > 0 else None  # None: the actual curve is flat
    norm = act[-1].norm()
    rel = ((act[-1] - prd[-1]).norm() / norm).item() if norm > 0 else None
    return r2, rel


# --------------------------------------------------------------------------------------------------------------
# claims
# --------------------------------------------------------------------------------------------------------------


def _bell(ys: list[float]) -> dict:
    k = max(range(len(ys)), key=lambda i: ys[i])
    return {"peak_index": k, "rise": ys[k] - ys[0], "drop": ys[k] - ys[-1],
            "held": 0 < k < len(ys) - 1 and ys[k] > ys[0] and ys[k] > ys[-1]}


def judge(runs: list[dict]) -> list[dict]:
    """The paper's SFT claims (paper §4, lessons/NOTES.md §4), measured per seed on the training prompts' mean
    curves (D_prob). Fixed rules, written before looking: *rises* = ends above its start; *falls* = ends below;
    *rise then fall* = its highest point is strictly inside the run and above both ends."""
    out = []

    def claim(key, paper, measure):
        add_claim(out, key, paper, [measure(r) for r in runs])

    def change(fam):
        def m(r):
            ys = r["curves"]["train"][fam]
            return {"change": ys[-1] - ys[0], "held": ys[-1] > ys[0]}
        return m

    def fall(fam):
        def m(r):
            ys = r["curves"]["train"][fam]
            return {"change": ys[-1] - ys[0], "held": ys[-1] < ys[0]}
        return m

    def bell(fam):
        def m(r):
            b = _bell(r["curves"]["train"][fam])
            b["peak_epoch"] = r["measured_steps"][b.pop("peak_index")] / r["steps_per_epoch"]
            return b
        return m

    fams = {f for f in runs[0]["curves"]["train"] if all(len(r["curves"]["train"].get(f, [])) > 1 for r in runs)}
    if "chosen" in fams:
        claim("chosen rises", "y_u⁺ rises steadily", change("chosen"))
    for f in SIMILAR:  # a rise and a fall need at least three measurements
        if f in fams and all(len(r["curves"]["train"][f]) >= 3 for r in runs):
            claim(f"{f} rises then falls", f"{FAMILIES[f]} (similar to y_u⁺) first rises, then falls", bell(f))
    if "other_chosen" in fams:
        claim("other_chosen rises", "y_{j≠u}⁺ keeps rising", change("other_chosen"))
    if {"other_chosen", "test_chosen"} <= fams:
        def above(r):
            o, t = r["curves"]["train"]["other_chosen"], r["curves"]["train"]["test_chosen"]
            return {"other_change": o[-1] - o[0], "test_change": t[-1] - t[0], "held": o[-1] - o[0] > t[-1] - t[0]}
        claim("other_chosen ends above test_chosen", "y_{j≠u}⁺ ends above y_test⁺ (change since the start: the "
              "two families differ in length)", above)
    for f in NON_HUMAN:
        if f in fams:
            claim(f"{f} falls", f"non-human {FAMILIES[f]} falls", fall(f))
    if "star" in fams:
        claim("star rises", "y* (teacher-forced argmax) rises", change("star"))
    return out


def _fmt(m: dict) -> str:
    if "peak_epoch" in m:
        return f"peak {m['rise']:+.1f} @ep{m['peak_epoch']:g}, drop {m['drop']:.1f}"
    if "other_change" in m:
        return f"{m['other_change']:+.1f} vs {m['test_change']:+.1f}"
    return f"{m['change']:+.1f}"


def claims_table(claims: list[dict], title: str) -> str:
    """The claims with this experiment's per-seed measurements (:func:`tinyld.experiments.common.claims_table`)."""
    return shared_claims_table(claims, title, _fmt)


# --------------------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------------------


def run(cfg: SFTDynamicsConfig) -> dict:
    """Run the experiment with ``cfg.threads`` CPU threads; write JSON, tables and figures into ``cfg.out``. Under
    torchrun the ranks other than 0 only join the training runs and return ``{}``."""
    if not isinstance(cfg, SFTDynamicsConfig):
        raise TinyldError(f"run takes an SFTDynamicsConfig, got {type(cfg).__name__}")
    pick_device(cfg.device)  # an unavailable device fails now, not after the first seed
    if cfg.probes is not None:
        ProbeSet.load(cfg.probes)  # a bad probe file fails now, with its line
    out = writable_dir(cfg.out, "sft-dynamics output folder")  # by every rank: a bad folder stops them all at once
    for name in ("sft_dynamics.json", "claims.txt", "conditions.txt"):
        if (out / name).is_dir():
            raise TinyldError(f"{out / name} is a folder: the experiment writes a file there; remove or rename it")
    with num_threads(cfg.threads):
        return _run(cfg, out)


def _run(cfg: SFTDynamicsConfig, out: Path) -> dict:
    t0 = time.perf_counter()
    modes = ["user"] if cfg.probes else cfg.modes
    print("tinyld sft-dynamics — what SFT does to every other answer (paper §4, Fig. 3)")
    print(f"  {pick_device(cfg.device)}, {cfg.threads} CPU threads · versions {json.dumps(versions())}\n"
          f"  config {json.dumps(asdict(cfg))}")
    clip = f"gradient norm clipped at {cfg.grad_clip:g}" if cfg.grad_clip else "no gradient clipping"
    print(f"  SFT: {cfg.optimizer}, lr {cfg.lr:g} (constant), {clip}, batch {cfg.batch_size}, {cfg.epochs} epochs, "
          f"seeds {cfg.seeds}; loss −log π(y⁺|x) summed over the response")
    if cfg.probes and cfg.conditions:
        print("  note: --conditions sweeps the world's base models; it is skipped with --probes")
    result = {"config": asdict(cfg), "versions": versions(), "modes": {}}
    main = is_main()  # under torchrun the other ranks join every training run below and measure nothing
    for mode in modes:
        print(f"\n== {mode} ==" + ("" if mode == "user" else f" (world mode {mode!r})"))
        runs, regimes, attrs = [], [], []
        for seed in cfg.seeds:
            model, tok, probes, world = setup(cfg, seed, mode)
            attributes = cfg.attribution and mode == modes[0] and not (cfg.fast and seed != cfg.seeds[0])
            if not main:
                sft_run(cfg, seed, mode, model, tok, probes, world)
                if attributes:
                    attribution(cfg, seed, model, tok, probes)
                continue
            reg = regime(model, tok, probes, world)
            regimes.append(reg)
            r = sft_run(cfg, seed, mode, model, tok, probes, world, out=out)
            runs.append(r)
            line = (f"  seed {seed}: log π(y⁺) {reg['logp_chosen']:.1f} → {r['curves']['train']['chosen'][-1]:.1f}"
                    f" · tracker {r['seconds']['tracker']:.1f} s = {100 * r['tracker_cost']:.0f}% of training "
                    f"{r['seconds']['train']:.1f} s")
            if attributes:
                a = attribution(cfg, seed, model, tok, probes)
                attrs.append(a)
                line += f" · attribution R² {_num(a['r2'], '.3f')} ({a['seconds']:.1f} s)"
            print(line, flush=True)
        if not main:
            continue
        claims = judge(runs)
        res = {"regime": summary(regimes), "regime_per_seed": regimes, "claims": claims, "runs": runs}
        if attrs:
            res["attribution"] = attrs
        result["modes"][mode] = res
        print_mode(mode, res, cfg)
        try:
            res["figure"] = str(figure(runs, out / f"fig3_{mode}.png", f"SFT, {mode} world ({cfg.optimizer}, lr "
                                       f"{cfg.lr:g}, {cfg.epochs} epochs, {len(runs)} seeds)"))
        except ImportError as e:
            print(f"  (no figure: {e})")
    if cfg.conditions and not cfg.probes:
        result["conditions"] = conditions(cfg, out)
    if not main:
        return {}
    result["runtime_s"] = round(time.perf_counter() - t0, 1)
    write_text_atomic(out / "sft_dynamics.json", json.dumps(plain_json(result), indent=1, allow_nan=False))
    text = "\n\n".join(claims_table(m["claims"], f"claims, {k} mode ({cfg.optimizer}, lr {cfg.lr:g})")
                       for k, m in result["modes"].items())
    write_text_atomic(out / "claims.txt", text + "\n")
    print(f"\nwrote {out / 'sft_dynamics.json'}, {out / 'claims.txt'}, figures and track_*.csv in {out} · "
          f"{result['runtime_s']} s")
    return result


def print_mode(mode: str, res: dict, cfg: SFTDynamicsConfig) -> None:
    reg = res["regime"]
    f = lambda k, p=2: f"{reg[k]['mean']:.{p}f} ± {reg[k]['sd']:.{p}f}"  # noqa: E731
    print(f"  regime before SFT (train prompts, mean ± sd over seeds): log π(y⁺) {f('logp_chosen', 1)} nats "
          f"({f('logp_chosen_per_token')} per token); y* ≠ y⁺ at {f('ystar_differs')} of positions; "
          f"valley depth {f('valley_depth', 1)} nats/token")
    if "answered_fact_correctly" in reg:
        print(f"  answered before SFT: fact correct {f('answered_fact_correctly')}, whole answer exact "
              f"{f('answered_exactly')}")
    costs = [r["tracker_cost"] for r in res["runs"]]
    print(f"  tracker cost: {100 * statistics.fmean(costs):.0f}% of training time (every {res['runs'][0]['every']}"
          f" steps, {len(res['runs'][0]['measured_steps'])} measurements)")
    print(claims_table(res["claims"], f"  claims ({cfg.optimizer}, lr {cfg.lr:g}):"))
    if res["runs"][0].get("generations"):
        print("  greedy answers per epoch (summed over seeds): correct / wrong value / other question's answer / "
              "other")
        for split in ("train", "test"):
            g0 = res["runs"][0]["generations"]
            row, n = [], len(g0["epochs"])
            show = sorted({e for e in {0, 1, 2, n - 1} | set(range(0, n, max(1, n // 5))) if e < n})  # JSON: all
            for e in show:
                c = {k: sum(r["generations"]["counts"][split][e][k] for r in res["runs"]) for k in ANSWER_KINDS}
                row.append("/".join(str(c[k]) for k in ANSWER_KINDS))
            print(f"    {split:5s} " + "  ".join(f"ep{g0['epochs'][e]}:{x}" for e, x in zip(show, row)))
    if res.get("attribution"):
        a = res["attribution"]
        share = [p["from_j"] / p["predicted"] for x in a for p in x["probes"]
                 if p["from_j"] is not None and abs(p["predicted"]) > 1e-9]
        top = sum(p["top_is_j"] for x in a for p in x["probes"])
        n = sum(len(x["probes"]) for x in a)
        who = (f"the example (x_j, y_j⁺) is the top contributor to y_{{j≠u}}⁺ under x_u for {top}/{n} probes; its "
               f"share of the predicted change {statistics.fmean(share):.2f} (mean); " if share else "")
        print(f"  attribution (SGD, lr {cfg.attr_lr:g}, {a[0]['steps']} steps): {who}summed predictions vs actual "
              "curve: R² " + ", ".join(_num(x["r2"], ".3f") for x in a) + "; final relative error "
              + ", ".join(_num(x["final_rel_err"], ".2f") for x in a))


def _num(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


# --------------------------------------------------------------------------------------------------------------
# conditions: optimizer, learning rate, pretraining depth
# --------------------------------------------------------------------------------------------------------------


def conditions(cfg: SFTDynamicsConfig, out: Path) -> dict:
    """The claims under other learning rates, gradient clipping, plain SGD and a shallower base model (fewer
    pretraining steps: a shallower valley), in the first mode of ``cfg.modes``. No attribution here."""
    mode = cfg.modes[0]
    shallow = 400 if cfg.pretrain_steps > 400 else max(1, cfg.pretrain_steps // 10)  # 400: the lessons' fast model
    base = (cfg.optimizer, cfg.lr, cfg.pretrain_steps, cfg.grad_clip)
    conds = [base, (cfg.optimizer, cfg.lr / 3, cfg.pretrain_steps, cfg.grad_clip),
             (cfg.optimizer, cfg.lr * 3, cfg.pretrain_steps, cfg.grad_clip),
             (cfg.optimizer, cfg.lr, cfg.pretrain_steps, 0.0 if cfg.grad_clip else 1.0),
             ("sgd", cfg.attr_lr, cfg.pretrain_steps, 0.0), (cfg.optimizer, cfg.lr, shallow, cfg.grad_clip)]
    print(f"\n== conditions ({mode} mode, {len(cfg.seeds)} seeds, {cfg.epochs} epochs) ==")
    main, rows = is_main(), []  # under torchrun the other ranks only train
    for opt, lr, pre, clip in conds:
        c = copy.copy(cfg)
        c.pretrain_steps, c.every, c.grad_clip = pre, 0, clip
        runs, valleys = [], []
        for seed in cfg.seeds:
            model, tok, probes, world = setup(c, seed, mode)
            if main:
                valleys.append(valley_depth(model, tok))
            runs.append(sft_run(c, seed, mode, model, tok, probes, world, optimizer=opt, lr=lr))
        if not main:
            continue
        cl = judge(runs)
        rows.append({"optimizer": opt, "lr": lr, "grad_clip": clip, "pretrain_steps": pre,
                     "valley_depth": statistics.fmean(valleys),
                     "claims": {x["claim"]: f"{x['held']}/{x['of']}" for x in cl},
                     "curves": {f: [statistics.fmean(v) for v in zip(*(r["curves"]["train"][f] for r in runs))]
                                for f in runs[0]["curves"]["train"]},
                     "epochs": [s / runs[0]["steps_per_epoch"] for s in runs[0]["measured_steps"]]})
        print(f"  {r_label(rows[-1])}: done", flush=True)
    if not main:
        return {}
    names = list(rows[0]["claims"])  # one row per claim, one column per condition: seeds where it held
    heads = [f"{r['optimizer']} {r['lr']:.2g}" for r in rows]
    table = [f"{'claim':38s}" + "".join(f"{h:>14s}" for h in heads),
             f"{'  gradient clipping':38s}" + "".join(f"{r['grad_clip'] or 'none':>14}" for r in rows),
             f"{'  base model: pretraining steps':38s}" + "".join(f"{r['pretrain_steps']:>14d}" for r in rows),
             f"{'  valley depth (nats/token)':38s}" + "".join(f"{r['valley_depth']:>14.1f}" for r in rows)]
    for n in names:
        table.append(f"{n:38s}" + "".join(f"{r['claims'][n]:>14s}" for r in rows))
    print("\n".join("  " + t for t in table))
    write_text_atomic(out / "conditions.txt", "\n".join(table) + "\n")
    res = {"mode": mode, "rows": rows, "table": table}
    try:
        from tinyld.plots import condition_lines

        keep = [f for f in ("chosen", "rejected", "other_chosen", "test_chosen", "random_tokens", "star")
                if f in rows[0]["curves"]]
        series = {f: {r_label(r): (r["epochs"], r["curves"][f]) for r in rows} for f in keep}
        res["figure"] = str(condition_lines(series, out / f"conditions_{mode}.png",
                                            f"SFT under conditions ({mode} mode, mean of {len(cfg.seeds)} seeds)"))
    except ImportError as e:
        print(f"  (no figure: {e})")
    return res


def r_label(r: dict) -> str:
    clip = f", clip {r['grad_clip']:g}" if r["grad_clip"] else ""
    return f"{r['optimizer']} {r['lr']:.2g}{clip}, pre {r['pretrain_steps']}"
