"""What the experiments share: the checks of the config fields they have in common, the pretrained world model and
the SFT stage that DPO starts from, the base model's regime and the per-family figure. The run itself (its folder,
header, claims and JSON) is the kit's: :mod:`tinyld.experiments.kit`.

No experiment imports another: each takes what it shares with the others from here.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyld.choose import load_real, model_choice
from tinyld.data import Example, PairData, make_batch
from tinyld.distributed import is_main
from tinyld.dynamics import sequence_change
from tinyld.evaluate import valley_depth
from tinyld.kernel import apply_A, jvp_rows
from tinyld.model import GPTConfig
from tinyld.pretrained import GPT2_RECIPE, TINY_RECIPE, pretrained
from tinyld.probes import FAMILIES, ProbeSet, position_stats
from tinyld.runtime import TinyldError, TrainingDiverged, check_choice, check_int, check_seed, pick_device
from tinyld.tokenizers import GPT2BPE
from tinyld.train import TrainConfig, Trainer
from tinyld.updates import lm_rows
from tinyld.world import Item, World, plain

# --------------------------------------------------------------------------------------------------------------
# config fields every experiment has
# --------------------------------------------------------------------------------------------------------------


def check_shared(cfg, command: str) -> None:
    """Check (and normalise) the fields every experiment config has: distinct seeds, threads, device, out."""
    if isinstance(cfg.seeds, int) or not isinstance(cfg.seeds, (list, tuple)) or not cfg.seeds \
            or not all(isinstance(s, int) for s in cfg.seeds):
        raise TinyldError(f"{command} --seeds must be a list of integers, got {cfg.seeds!r}")
    cfg.seeds = [check_seed(f"{command} --seeds", s) for s in cfg.seeds]
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise TinyldError(f"{command} --seeds repeats a seed: {cfg.seeds}")
    cfg.threads = check_int(f"{command} --threads", cfg.threads, 1, 256)
    check_choice(f"{command} --device", cfg.device, ("auto", "cpu", "cuda", "mps"))
    if not isinstance(cfg.out, (str, os.PathLike)) or not str(cfg.out).strip():
        raise TinyldError(f"{command} --out must be a folder path, got {cfg.out!r}")
    cfg.out = str(cfg.out)  # a Path too: the config is recorded as JSON


def fast_caps(cfg, caps: dict) -> list[str]:
    """Fast mode: cap each field of ``cfg`` named in ``caps`` at its value, and say what changed
    (:func:`changed_note`)."""
    before = {name: getattr(cfg, name) for name in caps}
    for name, cap in caps.items():
        if getattr(cfg, name) is not None:  # None: the field does not apply to this run
            setattr(cfg, name, min(getattr(cfg, name), cap))
    return changed_note(cfg, before)


def changed_note(cfg, before: dict) -> list[str]:
    """One line naming each field of ``cfg`` whose value differs from ``before`` (none: no line). The config records
    the values the run uses; this line says that fast mode changed them."""
    changed = [f"{k} {shown(v)} → {shown(getattr(cfg, k))}" for k, v in before.items() if getattr(cfg, k) != v]
    return [f"fast mode uses {', '.join(changed)}"] if changed else []


def shown(value) -> str:
    """A value as a message shows it: lists space-separated, floats with :g."""
    if isinstance(value, (list, tuple)):
        return " ".join(shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_own_file(value, flag: str) -> str | None:
    """A flag that names your own JSONL file (``--probes``, ``--pairs``): None, or a non-empty path (as text)."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise TinyldError(f"{flag} must name a JSONL file, got {value!r}")
    return str(value)


def check_base_model(cfg, command: str, own: bool = False) -> None:
    """Resolve and check the base-model fields the world experiments share: ``model`` (:func:`model_choice`; the
    world models tiny and gpt2, a Hugging Face GPT-2 folder to start gpt2 from, or a real LLM used as it is),
    ``pretrain_steps`` (the world models only) and ``device``. Sets ``preset`` (tiny, gpt2 or smollm2) and ``hf``
    (the folder) from ``model``. ``own``: the run is on your own file, where a folder too is used as it is."""
    cfg.model = "tiny" if cfg.model is None else cfg.model
    choice = model_choice(cfg.model, command, ("tiny", "gpt2", "gguf", "hf"),
                          "mini is a from-scratch shape for demo and bench")
    cfg.model, cfg.preset = choice.name, choice.preset
    cfg.hf = choice.path if choice.kind == "hf" else None
    if choice.real or (own and choice.kind == "hf"):
        if cfg.pretrain_steps is not None:
            raise TinyldError(f"{command} --pretrain-steps: --model {choice.name} is used as it is here; "
                              "--pretrain-steps is for the world models (tiny, gpt2): leave it out")
    else:
        if cfg.pretrain_steps is None:
            cfg.pretrain_steps = GPT2_RECIPE["steps"] if cfg.preset == "gpt2" else TINY_RECIPE.pretrain_steps
        cfg.pretrain_steps = check_int(f"{command} --pretrain-steps", cfg.pretrain_steps, 1)
    if cfg.device is None:
        cfg.device = "cpu" if cfg.preset == "tiny" else "auto"


def is_real(cfg) -> bool:
    """Whether the config's model is a real LLM used as it is (smollm2 or a GGUF file), not a world model."""
    return cfg.preset == "smollm2"


@dataclass(frozen=True)
class RealPlan:
    """How the world experiments run on a real LLM (SmolLM2-135M-Instruct, 135M parameters) on a 2-core CPU, where
    one training step on 8 chat prompts takes about 2.5 s and one measurement of a probe sequence about 0.1 s.
    The model trains on all 40 training prompts; the tracker measures a subset of the probes (the first
    ``train_probes`` training prompts, the first ``test_probes`` held-out ones) and :data:`REAL_FAMILIES`."""
    mode: str = "easy"  # one fact sentence per answer: facts this model has never seen
    train_probes: int = 8
    test_probes: int = 4
    fast_train_probes: int = 4
    fast_test_probes: int = 2
    fast_seeds: int = 1  # fast mode: the first seed only


REAL_PLAN = RealPlan()
REAL_FAMILIES = ("chosen", "rejected", "gpts_chosen", "gpts_rejected", "other_chosen", "test_chosen", "hum",
                 "urnd_chosen", "rnd", "random_tokens")  # and init, star: the families that mean something here


def real_defaults(cfg, defaults: dict, fast: dict) -> list[str]:
    """Fill the fields a real LLM runs with by default (``defaults``; ``fast``: their fast-mode caps) where the
    config left them None, the modes (:data:`REAL_PLAN`'s) and, in fast mode, the seeds; return fast mode's note."""
    for name, value in defaults.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    if getattr(cfg, "probes", None) is None and getattr(cfg, "pairs", None) is None:
        if cfg.modes is None:
            cfg.modes = [REAL_PLAN.mode]
    if not cfg.fast:
        return []
    before = {name: getattr(cfg, name) for name in (*fast, "seeds")}
    cfg.seeds = cfg.seeds[:REAL_PLAN.fast_seeds]
    for name, cap in fast.items():
        setattr(cfg, name, min(getattr(cfg, name), cap))
    return changed_note(cfg, before)


def real_note(cfg, also: str = "") -> str:
    """What a run on a real LLM keeps and leaves out (its budget), in one line."""
    plan = REAL_PLAN
    n = (plan.fast_train_probes, plan.fast_test_probes) if cfg.fast else (plan.train_probes, plan.test_probes)
    own = getattr(cfg, "probes", None) or getattr(cfg, "pairs", None)
    keep = "measures every line of your file" if own else (
        f"trains on all 40 training prompts as chat turns; measures {n[0]} training and {n[1]} held-out prompts "
        f"× {len(REAL_FAMILIES) + 2} families (y_init, y* included)")
    return f"  note: --model {cfg.model} is a real LLM, used as it is: the run {keep}" + (f"; {also}" if also else "")


def measured_probes(cfg, probes: ProbeSet) -> ProbeSet:
    """The probes a real LLM's run measures (:data:`REAL_PLAN`, :data:`REAL_FAMILIES`); a world model's: all."""
    if not is_real(cfg):
        return probes
    plan = REAL_PLAN
    n = (plan.fast_train_probes, plan.fast_test_probes) if cfg.fast else (plan.train_probes, plan.test_probes)
    return probes.subset(*n, REAL_FAMILIES)


@dataclass
class BaseModelConfig:
    """The base-model fields of a world experiment's config on their own, resolved and checked as theirs
    (:func:`check_base_model`): the world model for a caller without such a config (forecast's CHES)."""
    pretrain_steps: int | None = None  # None: TINY_RECIPE.pretrain_steps tiny, GPT2_RECIPE["steps"] gpt2
    model: str | None = None  # tiny (default), gpt2 or a Hugging Face GPT-2 folder (gpt2 pretrained from it)
    device: str | None = None  # None: cpu for tiny, auto for gpt2
    preset: str | None = field(default=None, init=False)  # from model
    hf: str | None = field(default=None, init=False)  # from model

    def __post_init__(self):
        check_base_model(self, "base model")


# --------------------------------------------------------------------------------------------------------------
# the world model, and the SFT stage before DPO
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldSFT:
    """The default SFT stage on the world's y⁺ that DPO starts from. dpo-dynamics' config reads its defaults from
    here, and forecast's CHES measures the model this stage makes, so the two cannot drift apart."""
    epochs: int = 4  # passes over the training prompts
    fast_epochs: int = 2  # at most this many in fast mode
    optimizer: str = "adamw"  # constant learning rate, no clipping (:func:`stage_config`)
    lr: float = 1e-3
    batch_size: int = 8  # prompts per step (40 training prompts: 5 steps per epoch)


WORLD_SFT = WorldSFT()


def base_model(cfg, seed: int, steps: int | None = None):
    """(tokenizer, model on cfg.device) for one seed: the cached pretrained world model of ``cfg.preset``, or the
    real LLM of ``cfg.model`` as it is (the same for every seed). A GPT-2 on a GPU trains on the fast path (fused
    attention, bf16 autocast)."""
    dev = pick_device(cfg.device).device
    if is_real(cfg):
        model, tok = load_real(model_choice(cfg.model, "base model"))
        return tok, model.to(dev).eval()
    _, tok, model = pretrained(seed, steps=steps or cfg.pretrain_steps, preset=cfg.preset, hf=cfg.hf,
                               device=cfg.device)
    model = model.to(dev).eval()
    return tok, model.use_fast(cfg.preset == "gpt2" and dev.type == "cuda")


def world_base(cfg, seed: int, mode: str, pretrain_steps: int | None = None):
    """(model, tokenizer, world) for one seed and world mode: the base model (:func:`base_model`; ``cfg``: any
    config with the base-model fields) and the world of that seed."""
    tok, model = base_model(cfg, seed, pretrain_steps)
    return model, tok, World(seed, mode=mode)


def world_probes(cfg, model, tok, world: World) -> ProbeSet:
    """The world's probes as ``cfg``'s model reads them (a real LLM: chat turns in natural text), the measured ones
    (:func:`measured_probes`), with y_init (generated with the KV cache; a measurement: rank 0's only)."""
    probes = measured_probes(cfg, ProbeSet.from_world(world, chat=tok if is_real(cfg) else None))
    return probes.with_init(model, tok) if is_main() else probes


def user_setup(cfg, path: str, seed: int, init: bool = True):
    """(model, tokenizer, probes with y_init, None) for your own probe or pair file: a world model (tiny, gpt2) of
    this seed, or a model used as it is (a Hugging Face folder, a GGUF file); prompts become chat turns where the
    model has a chat template. ``init``: y_init is this model's answer (False: the probes come without it)."""
    probes = ProbeSet.load(path)
    choice = model_choice(cfg.model, "--model")
    if choice.kind in ("hf", "gguf"):
        model, tok = load_real(choice)
    else:
        tok, model = base_model(cfg, seed)
    if getattr(tok, "template", None):
        probes = probes.as_chat(tok)
    probes.check_fits(tok, model.config.block_size)
    model = model.to(pick_device(cfg.device).device)
    return model.eval(), tok, probes.with_init(model, tok) if init and is_main() else probes, None


def preflight(cfg, command: str, path: str | None = None) -> int:
    """What would otherwise fail after the run has started, checked before its folder is made: the model file or
    folder loads, and your own ``path`` (probes or pairs) loads and fits the model's tokenizer and context (the
    tiny world model knows only the world's words); a pair whose chosen and rejected responses are the same text is
    refused. Returns the number of training prompts (the world's, or your file's)."""
    choice = model_choice(cfg.model, command)
    model = tok = None
    if choice.kind in ("hf", "gguf"):
        model, tok = load_real(choice)  # kept in memory: the run's own load of a GGUF file is then quick
    if path is None:
        return min(len(World(s, mode=m).train_items()) for s in cfg.seeds for m in cfg.modes)
    probes = ProbeSet.load(path)
    if choice.kind == "hf" or choice.real:
        block = model.config.block_size
    else:  # a world model, not pretrained yet: its tokenizer and context without it
        tok = World(cfg.seeds[0]).tokenizer() if choice.kind == "tiny" else GPT2BPE()
        block = GPTConfig.preset(choice.preset, **({"vocab_size": tok.vocab_size} if choice.kind == "tiny"
                                                   else {})).block_size
    if getattr(tok, "template", None):
        probes = probes.as_chat(tok)
    probes.check_fits(tok, block)
    if getattr(cfg, "pairs", None):
        same = [p.source for p in probes.probes if p.responses["chosen"] == p.responses["rejected"]]
        if same:
            raise TinyldError(f"{same[0]}: chosen and rejected are the same text, so the pair prefers nothing; drop "
                              "it or fix the rejected response")
    return len(probes.split("train"))


def world_examples(cfg, tok, world: World, split: str = "train") -> list[Example]:
    """The world's (prompt, y⁺, y⁻) of one split, as ``cfg``'s model reads them (a real LLM: chat turns)."""
    return ProbeSet.from_world(world, chat=tok if is_real(cfg) else None).examples(split)


def stage_steps(epochs: int, n_prompts: int, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` passes over ``n_prompts`` prompts in batches of ``batch_size`` (a last partial
    batch does not count)."""
    return epochs * (n_prompts // min(batch_size, n_prompts))


def stage_config(task: str, steps: int, seed: int, optimizer: str, lr: float, pair_loss: dict | None = None):
    """The TrainConfig of one stage of the world experiments: constant ``lr``, no clipping, one log line, quiet.
    ``pair_loss``: the DPO loss (None: TrainConfig's default)."""
    extra = {} if pair_loss is None else {"pair_loss": pair_loss}
    return TrainConfig(task=task, steps=steps, optimizer=optimizer, lr=lr, grad_clip=0.0, seed=seed,
                       log_every=max(1, steps), progress=False, **extra)


def lower_lr(e: TrainingDiverged, lr: float, also: str = "") -> str:
    """The advice for a stage that diverged: lower --lr (now ``lr``)``also``; when no update had been taken, the
    learning rate is not the cause, and the advice says so."""
    if e.updates == 0:
        return "the loss was not finite before any update, so the learning rate is not the cause"
    return f"lower --lr (now {lr:g}){also}"


def sft_stage(model, tok, examples: list[Example], tc: TrainConfig, batch_size: int, tracker=None):
    """A copy of ``model`` after ``tc.steps`` SFT steps on ``examples`` (prompt masked, summed log-prob) in batches
    of ``batch_size``, data order seeded by ``tc.seed``; ``tracker``: the Trainer's callback."""
    model = copy.deepcopy(model)
    if tc.steps == 0:
        return model
    data = PairData(tok, examples, batch_size, model.config.block_size, tc.seed)
    try:
        Trainer(model, data, tc, tok).run(tracker)
    except TrainingDiverged as e:
        raise TrainingDiverged(f"SFT (seed {tc.seed}) diverged: {lower_lr(e, tc.lr)} ({e.fact})", e.fact,
                               e.updates) from None
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# measurements and figures
# --------------------------------------------------------------------------------------------------------------


def regime(model, tok, probes: ProbeSet, world: World | None) -> dict:
    """Where the base model starts (train split): log π(y⁺) per response and per token, the fraction of training
    prompts answered correctly, the fraction of y⁺ positions where y* ≠ y⁺, and valley depth."""
    train = probes.split("train")
    prompts, chosen = [p.prompt for p in train], [p.responses["chosen"] for p in train]
    b = make_batch(tok, prompts, chosen, model.config.block_size).to(next(model.parameters()).device)
    with torch.no_grad():
        logits = model.eval()(b.idx)  # (B, T, V)
    st = position_stats(logits, b.targets)
    mask = b.mask  # (B, T) the positions of y⁺
    differ = ((logits.argmax(-1) != b.targets) & mask).sum().item() / mask.sum().item()
    answers = [p.responses.get("init", "") for p in train]
    exact = sum(plain(a) == plain(c) for a, c in zip(answers, chosen)) / len(train)
    res = {"logp_chosen": st["logp"].mean().item(), "logp_chosen_per_token": (st["logp"].sum() /
                                                                              st["tokens"].sum()).item(),
           "answered_exactly": exact, "ystar_differs": differ, "valley_depth": valley_depth(model, tok)}
    if world is not None:
        res["answered_fact_correctly"] = sum(world.classify(item_of(world, p), a) == "correct" for p, a in
                                             zip(train, answers)) / len(train)
    return res


def first_step(model, tok, probes: ProbeSet, step) -> dict:
    """Is one training step at the run's learning rate in the first-order regime? ``step(m)`` takes the run's first
    real step (its optimizer, learning rate, loss and first batch) on ``m``, a copy of ``model``. The prediction
    of Δ log π(y|x) for every measured training-prompt probe (every family but y*) is first order along that real
    update, A·J·Δθ (one JVP, :func:`tinyld.kernel.jvp_rows`); the actual change is measured after the step.
    Returns both per sequence, the largest |actual|, the relative error ‖pred − actual‖/‖actual‖ and R²."""
    train = probes.split("train")
    pairs = [(p.prompt, text) for p in train for f, text in p.responses.items()]
    b = make_batch(tok, [x for x, _ in pairs], [y for _, y in pairs], model.config.block_size)
    m = copy.deepcopy(model).eval()
    observed = lm_rows(b.to(next(m.parameters()).device))
    params = dict(m.named_parameters())
    theta0 = {k: p.detach().clone() for k, p in params.items()}
    with torch.no_grad():
        z0 = observed.logits(m)  # (N_o, V)
    step(m)
    with torch.no_grad():
        actual = sequence_change(observed, F.log_softmax(observed.logits(m.eval()), -1) - F.log_softmax(z0, -1))
        delta = {k: p.detach() - theta0[k] for k, p in params.items()}
        for k, p in params.items():
            p.copy_(theta0[k])
    pred = sequence_change(observed, apply_A(z0, jvp_rows(m, observed, delta)[1]))  # (n_seq,)
    err = (pred - actual).norm() / actual.norm()
    r2 = 1 - ((pred - actual) ** 2).sum() / ((actual - actual.mean()) ** 2).sum()
    return {"sequences": len(pairs), "predicted": pred.tolist(), "actual": actual.tolist(),
            "max_abs_actual": actual.abs().max().item(), "rel_err": err.item(), "r2": r2.item()}


def first_step_line(check: dict, what: str) -> str:
    """One line on :func:`first_step`'s result."""
    return (f"  first-order check, one {what} step: predicted vs actual Δ log π(y|x) on {check['sequences']} probe "
            f"sequences: relative error {check['rel_err']:.3f}, R² {check['r2']:.4f}, largest |Δ| "
            f"{check['max_abs_actual']:.2f} nats")


def item_of(world: World, probe) -> Item:
    """The world's item that a probe of :meth:`ProbeSet.from_world` asks about (its prompt may be a chat turn)."""
    return world.item(probe.meta["name"], probe.meta["relation"])


def figure(runs: list[dict], path: Path, title: str) -> Path:
    """The paper's Fig. 3 layout: one panel per family, mean over prompts; line = mean over seeds, band = min…max
    over seeds; training prompts solid, held-out prompts dashed."""
    from tinyld.plots import panels

    fams = list(runs[0]["curves"]["train"])
    x = [s / runs[0]["steps_per_epoch"] for s in runs[0]["measured_steps"]]
    data = {}
    for f in fams:
        sym = FAMILIES.get(f, f)
        data[f if sym.replace(" ", "_") == f else f"{f} ({sym})"] = {
            split: [[r["curves"][split][f][i] for r in runs] for i in range(len(x))]
            for split in ("train", "test") if all(f in r["curves"][split] and r["curves"][split][f] for r in runs)}
    return panels(x, data, path, title, xlabel="epoch", ylabel="log π(y|x)")
