"""``python -m tinyld <command>`` — env check, the main job (demo), golden fixture, benchmarks.

    python -m tinyld env                 versions, device choice and why, OK/FAIL per check
    python -m tinyld demo                pretrain + SFT a tiny GPT on the synthetic world (the main job)
    python -m tinyld sft-dynamics        what SFT does to every other answer: probes, claims, attribution
    python -m tinyld dpo-dynamics        what DPO does: squeezing, extend, on- vs off-policy, conditions
    python -m tinyld forecast            pre-memorization accuracy and CHES on a reasoning task
    python -m tinyld golden [--write F]  first training losses on a fixed seed (the test fixture)
    python -m tinyld bench step          tokens/s of one training step, plain and fast path (JSON)
    python -m tinyld bench decompose     predicted full-vocab Δ log π vs one training step (JSON)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields


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

    def optional(mod):
        def f():
            m = __import__(mod)
            return getattr(m, "__version__", "")
        return f

    check("GPT-2 tokenizer", gpt2_bpe)
    check("model", model_and_jvp)
    check("presets", presets)
    for mod in ("matplotlib", "transformers", "sklearn"):
        check(f"optional: {mod}", optional(mod))
    core_ok = all(checks[:3])
    print("core OK" if core_ok else "core FAIL")
    return 0 if core_ok else 1


def cmd_demo(args) -> int:
    from tinyld.demo import DemoConfig, fast_mode, run_demo

    kw = {f.name: getattr(args, f.name) for f in fields(DemoConfig) if getattr(args, f.name, None) is not None}
    kw["fast"] = args.fast or fast_mode()
    run_demo(DemoConfig(**kw))
    return 0


def cmd_sft_dynamics(args) -> int:
    from tinyld.demo import fast_mode
    from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, run

    kw = {f.name: getattr(args, f.name) for f in fields(SFTDynamicsConfig) if getattr(args, f.name, None) is not None}
    kw["fast"] = args.fast or fast_mode()
    run(SFTDynamicsConfig(**kw))
    return 0


def cmd_dpo_dynamics(args) -> int:
    from tinyld.demo import fast_mode
    from tinyld.experiments.dpo_dynamics import DPODynamicsConfig, run

    kw = {f.name: getattr(args, f.name) for f in fields(DPODynamicsConfig) if getattr(args, f.name, None) is not None}
    kw["fast"] = args.fast or fast_mode()
    run(DPODynamicsConfig(**kw))
    return 0


def cmd_forecast(args) -> int:
    from tinyld.demo import fast_mode
    from tinyld.experiments.forecasting import ForecastConfig, run

    kw = {f.name: getattr(args, f.name) for f in fields(ForecastConfig) if getattr(args, f.name, None) is not None}
    kw["fast"] = args.fast or fast_mode()
    run(ForecastConfig(**kw))
    return 0


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

    kw = dict(preset=args.preset, vocab=args.vocab, batch=args.batch, seq=args.seq, device=args.device,
              repeat=args.repeat, warmup=args.warmup)
    res = bench_step(**kw) if args.what == "step" else bench_decompose(**kw, eta=args.eta)
    print(json.dumps(res))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tinyld", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="versions, device choice and OK/FAIL checks")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    d = sub.add_parser("demo", help="the main job: pretrain + SFT a tiny GPT on the synthetic world")
    d.add_argument("--seed", type=int, help="seed for the world, init and data order (default 0)")
    d.add_argument("--preset", help="model preset: tiny (default) or mini")
    d.add_argument("--pretrain-steps", dest="pretrain_steps", type=int, help="pretraining steps (default 3000)")
    d.add_argument("--pretrain-lr", dest="pretrain_lr", type=float, help="pretraining AdamW lr (default 2e-2)")
    d.add_argument("--sft-steps", dest="sft_steps", type=int, help="SFT steps (default 60)")
    d.add_argument("--sft-lr", dest="sft_lr", type=float, help="SFT AdamW lr (default 1e-3)")
    d.add_argument("--out", help="output folder (default tinyld_out)")
    d.add_argument("--device", help="auto | cpu (default) | cuda | mps")
    d.add_argument("--threads", type=int, help="CPU threads (default 2: the figures in the README were made with 2)")
    d.add_argument("--fast", action="store_true", help="a few steps only (also TINYLD_FAST=1)")
    s = sub.add_parser("sft-dynamics", help="what SFT does to every other answer (paper Fig. 3), with claims")
    s.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    s.add_argument("--modes", nargs="+", help="world modes: hard easy (default both)")
    s.add_argument("--epochs", type=int, help="SFT epochs (default 20)")
    s.add_argument("--optimizer", help="sgd | adamw (default) | rmsprop")
    s.add_argument("--lr", type=float, help="SFT learning rate (default 1e-3)")
    s.add_argument("--batch-size", dest="batch_size", type=int, help="prompts per step (default 8)")
    s.add_argument("--grad-clip", dest="grad_clip", type=float, help="gradient-norm clipping (default 0: none)")
    s.add_argument("--every", type=int, help="steps between measurements (default: once per epoch)")
    s.add_argument("--pretrain-steps", dest="pretrain_steps", type=int,
                   help="base model pretraining (default 3000; gpt2: 1000)")
    s.add_argument("--preset", help="base model: tiny (default) or gpt2 (GPT-2 small and BPE, pretrained on the world)")
    s.add_argument("--hf", metavar="FOLDER", help="start the gpt2 base model from a local Hugging Face GPT-2 folder")
    s.add_argument("--no-attribution", dest="attribution", action="store_false", default=None,
                   help="skip the SGD attribution run")
    s.add_argument("--attr-lr", dest="attr_lr", type=float, help="SGD lr of the attribution run (default 1e-4)")
    s.add_argument("--attr-prompts", dest="attr_prompts", type=int, help="prompts attributed (default 4)")
    s.add_argument("--conditions", action="store_true", default=None,
                   help="also sweep optimizer, lr and pretraining depth")
    s.add_argument("--probes", metavar="FILE", help="your own probe JSONL (GPT-2 BPE; needs --model)")
    s.add_argument("--model", help="with --probes: a Hugging Face GPT-2 folder or a preset (random init)")
    s.add_argument("--out", help="output folder (default tinyld_out/sft_dynamics)")
    s.add_argument("--device", help="auto | cpu | cuda | mps (default: cpu for tiny, auto for gpt2)")
    s.add_argument("--threads", type=int, help="CPU threads (default 2)")
    s.add_argument("--fast", action="store_true", help="8 epochs on a 400-step base model, ≤ 60 s (also TINYLD_FAST=1)")
    q = sub.add_parser("dpo-dynamics", help="what DPO does to every answer (paper Fig. 4), squeezing, extend, "
                       "on-policy, conditions")
    q.add_argument("--experiment", help="dynamics | extend | on-policy | conditions | all (default)")
    q.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    q.add_argument("--modes", nargs="+", help="world modes: hard easy (default both)")
    q.add_argument("--sft-epochs", dest="sft_epochs", type=int, help="SFT epochs before DPO (default 4)")
    q.add_argument("--dpo-epochs", dest="dpo_epochs", type=int, help="DPO epochs (default 8)")
    q.add_argument("--optimizer", help="both stages: sgd | adamw (default) | rmsprop")
    q.add_argument("--lr", type=float, help="both stages (default 1e-3)")
    q.add_argument("--loss", help="sigmoid (DPO, default) | hinge | ipo | robust | rpo | simpo | dpop")
    q.add_argument("--beta", type=float, help="β (default 0.1)")
    q.add_argument("--batch-size", dest="batch_size", type=int, help="pairs per step (default 8)")
    q.add_argument("--samples", type=int, help="answers sampled per prompt: on-policy pairs, win rate (default 4)")
    q.add_argument("--pretrain-steps", dest="pretrain_steps", type=int,
                   help="base model pretraining (default 3000; gpt2: 1000)")
    q.add_argument("--preset", help="base model: tiny (default) or gpt2 (GPT-2 small and BPE, pretrained on the world)")
    q.add_argument("--hf", metavar="FOLDER", help="start the gpt2 base model from a local Hugging Face GPT-2 folder")
    q.add_argument("--out", help="output folder (default tinyld_out/dpo_dynamics)")
    q.add_argument("--device", help="auto | cpu | cuda | mps (default: cpu for tiny, auto for gpt2)")
    q.add_argument("--threads", type=int, help="CPU threads (default 2)")
    q.add_argument("--fast", action="store_true", help="2 SFT + 4 DPO epochs on a 400-step base model (also "
                   "TINYLD_FAST=1)")
    f = sub.add_parser("forecast", help="pre-memorization accuracy on a reasoning task, and CHES for DPO pairs")
    f.add_argument("--experiment", help="sweep | perturb | curate | ches | all (default)")
    f.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    f.add_argument("--lrs", type=float, nargs="+", help="sweep: AdamW learning rates (default 1e-3 3e-3 1e-2)")
    f.add_argument("--epochs", type=int, nargs="+", help="sweep: epochs per run (default 3 10)")
    f.add_argument("--data", type=int, nargs="+", help="sweep: training questions per run (default 32 256)")
    f.add_argument("--samples", type=int, help="solutions sampled per question and checkpoint (default 5)")
    f.add_argument("--temperature", type=float, help="sampling temperature (default 0.8)")
    f.add_argument("--tau", type=float, help="memorized: perplexity < exp(e^tau) (default -2.3)")
    f.add_argument("--curate-lr", dest="curate_lr", type=float, help="curate: AdamW learning rate (default 1e-2)")
    f.add_argument("--curate-epochs", dest="curate_epochs", type=int, help="curate: epochs per run (default 10)")
    f.add_argument("--pretrain-steps", dest="pretrain_steps", type=int, help="arithmetic base model (default 1500)")
    f.add_argument("--out", help="output folder (default tinyld_out/forecast)")
    f.add_argument("--device", help="auto | cpu (default) | cuda | mps")
    f.add_argument("--threads", type=int, help="CPU threads (default 2)")
    f.add_argument("--fast", action="store_true", help="a small sweep on 400-step base models (also TINYLD_FAST=1)")
    g = sub.add_parser("golden", help="first training losses on a fixed seed (test fixture)")
    g.add_argument("--write", metavar="FILE", help="write the fixture here instead of printing it")
    b = sub.add_parser("bench", help="benchmarks that print JSON")
    b.add_argument("what", choices=["step", "decompose"],
                   help="step: one training step, plain vs fast path · decompose: predicted full-vocab Δ log π vs a "
                        "step")
    b.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    b.add_argument("--vocab", type=int, default=128, help="vocabulary for tiny/mini (default 128)")
    b.add_argument("--batch", type=int, default=8, help="batch size B (default 8)")
    b.add_argument("--seq", type=int, default=64, help="sequence length T (default 64)")
    b.add_argument("--repeat", type=int, default=5, help="timed repeats, median reported (default 5)")
    b.add_argument("--warmup", type=int, default=2, help="untimed repeats first (default 2; the fast path compiles "
                   "in them on a GPU)")
    b.add_argument("--device", default="cpu", help="auto | cpu (default) | cuda | mps")
    b.add_argument("--eta", type=float, default=None,
                   help="SGD step for the prediction-error figure (default: the largest predicted |Δ log π(y|x)| "
                        "is 0.1 nats)")
    args = p.parse_args(argv)
    from tinyld.runtime import TinyldError

    try:
        if args.cmd in ("demo", "sft-dynamics", "dpo-dynamics", "forecast"):  # under torchrun: data-parallel
            from tinyld.train import init_distributed, launched_processes

            if args.cmd == "forecast" and launched_processes() > 1:
                raise TinyldError("forecast does not run under torchrun (it trains tiny models in many short runs, "
                                  "which one process does as fast, and CHES trains on one pair at a time, which "
                                  "processes cannot share): run it with python -m tinyld forecast")
            init_distributed()
        rc = {"env": cmd_env, "demo": cmd_demo, "sft-dynamics": cmd_sft_dynamics,
              "dpo-dynamics": cmd_dpo_dynamics, "forecast": cmd_forecast, "golden": cmd_golden,
              "bench": cmd_bench}[args.cmd](args)
        _wait_for_every_rank()
        return rc
    except TinyldError as err:  # a user mistake: one clear line, no traceback
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank meets it; rank 0 says it
            print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path, a permission, a full disk: say which, no traceback
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:  # Ctrl-C: training saved what it could and says how to go on
        print(f"\n{str(err) or 'interrupted'}", file=sys.stderr)
        return 130
    finally:  # under torchrun: close the process group, so that no rank exits holding a connection to another
        if (dist := _process_group()) is not None:
            dist.destroy_process_group()


def _process_group():
    """torch.distributed while a process group is up (under torchrun), else None. Never imports torch."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def _wait_for_every_rank() -> None:
    """Under torchrun: the ranks finish together (rank 0 may still be measuring and writing when the others are
    done training)."""
    if (dist := _process_group()) is not None:
        dist.barrier()


if __name__ == "__main__":
    sys.exit(main())
