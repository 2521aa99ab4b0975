"""The command line's tables: every experiment command's flags, read off its config dataclass (type, nargs and
"(default X)" from each field), and the parser of one such command (:func:`add_config_command`)."""
from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import NamedTuple

from tinyld.experiments.common import WORLD_SFT
from tinyld.experiments.dpo_dynamics.config import REAL_DPO, WORLD_DPO_EPOCHS
from tinyld.experiments.explain.config import DEFAULT_LR
from tinyld.experiments.rl_dynamics.config import REAL_RL, TINY
from tinyld.experiments.sft_dynamics.config import REAL_SFT, WORLD_RUN
from tinyld.pretrained import GPT2_RECIPE, TINY_RECIPE


def _pretrain_steps_default() -> str:
    """What --pretrain-steps of sft-dynamics and dpo-dynamics defaults to (resolved in check_base_model)."""
    return f"{TINY_RECIPE.pretrain_steps}; gpt2: {GPT2_RECIPE['steps']}"


# A flag row: (config field, help without its default[, extras]). The flag is --field with "-" for "_" unless extras
# give "flag"; its type and nargs come from the field's annotation; "(default X)" comes from the field's default, or
# from extras["shown"] where the default is None and resolved later. Other extras go to add_argument as they are.
_MODEL = "tiny | gpt2: the world models · smollm2 | a .gguf file: a real LLM as it is · a Hugging Face GPT-2 folder"
_BASE_MODEL_FLAGS = [  # sft-dynamics and dpo-dynamics: the model they start from
    ("model", _MODEL, dict(shown="tiny")),
    ("pretrain_steps", "world-model pretraining", dict(shown=_pretrain_steps_default)),
]
_DEVICE = "auto | cpu | cuda | mps"
_DEVICE_BY_PRESET = ("device", _DEVICE, dict(shown="cpu for tiny, auto otherwise"))

_DEMO_FLAGS = [
    ("seed", "seed for the world, init and data order"),
    ("model", "tiny or mini: the shape trained from scratch"),
    ("pretrain_steps", "pretraining steps"),
    ("pretrain_lr", "pretraining AdamW lr"),
    ("sft_steps", "SFT steps"),
    ("sft_lr", "SFT AdamW lr"),
    ("out", "output folder"),
    ("device", _DEVICE),
    ("threads", "CPU threads, as for the figures in the README"),
]
_SFT_FLAGS = [
    ("seeds", "seeds"),
    ("modes", "world modes: hard, easy or both (not with --probes)", dict(shown="hard easy")),
    ("epochs", "SFT epochs", dict(shown=f"{WORLD_RUN['epochs']}; smollm2: {REAL_SFT['epochs']}")),
    ("optimizer", "sgd | adamw | rmsprop"),
    ("lr", "SFT learning rate", dict(shown=f"{WORLD_RUN['lr']:g}; smollm2: {REAL_SFT['lr']:g}")),
    ("batch_size", "prompts per step"),
    ("grad_clip", "gradient-norm clipping, 0: none"),
    ("every", "steps between measurements, 0: once per epoch"),
    *_BASE_MODEL_FLAGS,
    ("attribution", "skip the SGD attribution run", dict(flag="--no-attribution", action="store_false")),
    ("attr_lr", "SGD lr of the attribution run"),
    ("attr_prompts", "prompts attributed"),
    ("conditions", "also sweep optimizer, lr and pretraining depth", dict(action="store_true")),
    ("probes", "your own probe JSONL (with a chat model: prompts become chat turns)", dict(metavar="FILE")),
    ("out", "output folder"),
    _DEVICE_BY_PRESET,
    ("threads", "CPU threads"),
]
_DPO_FLAGS = [
    ("experiment", "dynamics | extend | on-policy | conditions | all"),
    ("seeds", "seeds"),
    ("modes", "world modes: hard, easy or both", dict(shown="hard easy; conditions: hard")),
    ("sft_epochs", "SFT epochs before DPO", dict(shown=f"{WORLD_SFT.epochs}; smollm2: {REAL_DPO['sft_epochs']}")),
    ("dpo_epochs", "DPO epochs", dict(shown=f"{WORLD_DPO_EPOCHS}; smollm2: {REAL_DPO['dpo_epochs']}")),
    ("optimizer", "both stages: sgd | adamw | rmsprop"),
    ("lr", "both stages", dict(shown=f"{WORLD_SFT.lr:g}; smollm2: {REAL_DPO['lr']:g}")),
    ("loss", "sigmoid (DPO) | hinge | ipo | robust | rpo | simpo | dpop"),
    ("beta", "β"),
    ("batch_size", "pairs per step"),
    ("samples", "answers sampled per prompt: on-policy pairs, win rate"),
    *_BASE_MODEL_FLAGS,
    ("pairs", "your own preference pairs, JSONL as a probe file (not with --modes)", dict(metavar="FILE")),
    ("out", "output folder"),
    _DEVICE_BY_PRESET,
    ("threads", "CPU threads"),
]
_FORECAST_FLAGS = [
    ("model", "tiny: forecast trains tiny models from scratch"),
    ("experiment", "sweep | perturb | curate | ches | all"),
    ("seeds", "seeds"),
    ("lrs", "sweep: AdamW learning rates"),
    ("epochs", "sweep: epochs per run"),
    ("data", "sweep: training questions per run"),
    ("samples", "solutions sampled per question and checkpoint"),
    ("temperature", "sampling temperature"),
    ("tau", "memorized: perplexity < exp(e^tau)"),
    ("curate_lr", "curate: AdamW learning rate"),
    ("curate_epochs", "curate: epochs per run"),
    ("pretrain_steps", "arithmetic base model"),
    ("out", "output folder"),
    ("device", _DEVICE),
    ("threads", "CPU threads"),
]


_EXPLAIN_FLAGS = [
    ("pairs", "your preference pairs: JSONL, one object per line with prompt, chosen, rejected", dict(metavar="FILE")),
    ("model", _MODEL),
    ("steps", "DPO steps of the watched run"),
    ("optimizer", "sgd | adamw | rmsprop"),
    ("lr", "learning rate", dict(shown=f"{DEFAULT_LR['real']:g} for a real LLM, {DEFAULT_LR['world']:g} for a world "
                                       "model")),
    ("loss", "sigmoid (DPO) | hinge | ipo | robust | rpo | simpo | dpop"),
    ("beta", "β"),
    ("batch_size", "pairs per step"),
    ("seed", "data order (and a world model's seed)"),
    ("pretrain_steps", "a world model's pretraining", dict(shown=_pretrain_steps_default)),
    ("out", "output folder"),
    _DEVICE_BY_PRESET,
    ("threads", "CPU threads"),
]


def _rl(field: str, text: str) -> tuple:
    """An rl-dynamics flag whose default depends on the model: the tiny GPT's; smollm2's."""
    tiny, real = TINY[field], REAL_RL[field]
    shown = f"{tiny:g}; smollm2: {real:g}" if isinstance(tiny, float) else f"{tiny}; smollm2: {real}"
    return (field, text, dict(shown=shown))


_RL_FLAGS = [
    ("model", "tiny: the arithmetic task's GPT · smollm2 | a .gguf file: a real LLM, SFT on the task first"),
    ("seeds", "seeds"),
    ("losses", "grpo | dr_grpo (each seed runs each, from one SFT model)"),
    _rl("steps", "RL steps"),
    ("optimizer", "sgd | adamw | rmsprop"),
    _rl("lr", "RL learning rate (constant, no clipping)"),
    ("group", "samples per question (G ≥ 2)"),
    _rl("per_step", "questions per step"),
    ("temperature", "sampling temperature"),
    ("clip", "ε of the clipped ratio"),
    ("kl", "β of the k3 KL penalty to the SFT model"),
    ("inner_steps", "optimizer steps per batch of samples"),
    _rl("sft_data", "the SFT model's training questions"),
    ("pretrain_steps", "arithmetic base model (tiny only)", dict(shown=str(TINY["pretrain_steps"]))),
    _rl("measure_every", "steps between measurements"),
    ("out", "output folder"),
    ("device", _DEVICE, dict(shown="cpu for tiny, auto otherwise")),
    ("threads", "CPU threads"),
]


class ConfigCommand(NamedTuple):
    """A subcommand that fills a config dataclass from its flags and runs the experiment on it."""

    config: str  # "module:Class" of the config dataclass (imported when the parser is built)
    run: str  # "module:function" that runs it (imported when the command runs)
    help: str  # one line in ``python -m tinyld --help``
    fast_help: str  # what --fast does
    flags: list  # flag rows (see above)
    internal: tuple = ()  # fields with no flag: fixed settings of the experiment, set in Python only
    used_by: dict | None = None  # field → the --experiment values that use it (others refuse it); None: an
    # experiment's run folder is not managed (the demo starts over each time), so no --overwrite / --resume


CONFIG_COMMANDS = {
    "demo": ConfigCommand(
        "tinyld.demo:DemoConfig", "tinyld.demo:run_demo",
        "the main job: pretrain + SFT a tiny GPT on the synthetic world",
        "a few steps only (also TINYLD_FAST=1)", _DEMO_FLAGS, internal=("batch_size",)),
    "sft-dynamics": ConfigCommand(
        "tinyld.experiments.sft_dynamics:SFTDynamicsConfig", "tinyld.experiments.sft_dynamics:run",
        "what SFT does to every other answer (paper Fig. 3), with claims",
        "8 epochs on a 400-step base model, ≤ 60 s (also TINYLD_FAST=1)", _SFT_FLAGS, used_by={}),
    "dpo-dynamics": ConfigCommand(
        "tinyld.experiments.dpo_dynamics:DPODynamicsConfig", "tinyld.experiments.dpo_dynamics:run",
        "what DPO does to every answer (paper Fig. 4), squeezing, extend, on-policy, conditions",
        "2 SFT + 4 DPO epochs on a 400-step base model (also TINYLD_FAST=1)", _DPO_FLAGS,
        used_by={"samples": ("extend", "on-policy")}),
    "forecast": ConfigCommand(
        "tinyld.experiments.forecasting:ForecastConfig", "tinyld.experiments.forecasting:run",
        "pre-memorization accuracy on a reasoning task, and CHES for DPO pairs",
        "a small sweep on 400-step base models (also TINYLD_FAST=1)", _FORECAST_FLAGS,
        internal=("measured", "batch_size", "taus", "curate_start", "curate_add", "curate_rounds", "ches_lr",
                  "ches_steps", "ches_beta", "ches_pretrain_steps"),
        used_by={**dict.fromkeys(("lrs", "epochs", "data"), ("sweep", "perturb")),
                 **dict.fromkeys(("samples", "temperature", "tau", "pretrain_steps"), ("sweep", "perturb", "curate")),
                 **dict.fromkeys(("curate_lr", "curate_epochs"), ("curate",))}),
    "explain": ConfigCommand(
        "tinyld.experiments.explain:ExplainConfig", "tinyld.experiments.explain:run",
        "where did the probability go? your preference pairs before and during a short DPO run",
        "4 DPO steps (also TINYLD_FAST=1)", _EXPLAIN_FLAGS, used_by={}),
    "rl-dynamics": ConfigCommand(
        "tinyld.experiments.rl_dynamics:RLDynamicsConfig", "tinyld.experiments.rl_dynamics:run",
        "what RL with verifiable rewards (GRPO, Dr. GRPO) does on the word problems, with claims",
        "one seed, a 400-step base model, 24 RL steps; smollm2: SFT on 64 questions, 4 RL steps of 2 questions × 4 "
        "samples (also TINYLD_FAST=1)", _RL_FLAGS,
        internal=("sft_epochs", "sft_lr", "probes", "fixed_samples", "test_questions", "passk_n"), used_by={}),
}




def field_defaults(config_cls) -> dict:
    """Each field of a config dataclass → its default (a default_factory called)."""
    return {f.name: f.default if f.default_factory is MISSING else f.default_factory() for f in fields(config_cls)}


def shown_default(value) -> str:
    """A default as the help shows it: lists space-separated, floats with :g."""
    if isinstance(value, (list, tuple)):
        return " ".join(shown_default(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _value_kind(hint) -> dict:
    """argparse type and nargs for a field annotation: int, float, str, list[X] (one or more), X | None (as X)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return dict(nargs="+", **_value_kind(args[0]))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _value_kind(args[0])
    if hint not in (int, float, str):
        raise TypeError(f"no flag type for {hint!r}: give the row an action")
    return {} if hint is str else dict(type=hint)


def add_config_command(sub, name: str, config_cls, flags, help: str, fast_help: str, lifecycle: bool = False):
    """Add subcommand ``name``: one flag per row of ``flags``, with its type from the field's annotation and
    "(default X)" from the field's default, and --fast (``lifecycle``: also --overwrite and --resume). Flag
    defaults stay None (--fast: False), so that only the flags given reach the config and its own defaults apply
    otherwise."""
    p = sub.add_parser(name, help=help)
    hints, defaults = typing.get_type_hints(config_cls), field_defaults(config_cls)
    for field_name, text, *extra in flags:
        kw = dict(extra[0]) if extra else {}
        flag = kw.pop("flag", "--" + field_name.replace("_", "-"))
        shown = kw.pop("shown", defaults[field_name])  # the text of a None default resolved later
        shown = shown() if callable(shown) else shown
        if "action" not in kw:  # a value, not a switch: a switch's help says what it does instead of a default
            kw = {**_value_kind(hints[field_name]), **kw}  # a row's own type or nargs wins
            text = text if shown is None else f"{text} (default {shown_default(shown)})"
        p.add_argument(flag, dest=field_name, default=None, help=text, **kw)
    p.add_argument("--fast", action="store_true", help=fast_help)
    old_flags(p)
    if lifecycle:
        p.add_argument("--overwrite", action="store_true", help="replace the run that --out holds (the files its "
                       "manifest lists)")
        p.add_argument("--resume", action="store_true", help="continue the run that --out holds from its finished "
                       "parts (the same flags)")
    return p


def old_flags(p) -> None:
    """--preset and --hf are gone: parsed only to be refused with the new spelling (``tinyld.__main__``)."""
    p.add_argument("--preset", dest="old_preset", help=argparse.SUPPRESS)
    p.add_argument("--hf", dest="old_hf", help=argparse.SUPPRESS)
