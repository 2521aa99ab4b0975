"""The command line: env check, the main job (fast mode), user errors without tracebacks, benchmarks, and the
config commands' flags against their config classes."""
import argparse
import dataclasses
import json
import subprocess
import sys

import pytest

from tinyld.__main__ import CONFIG_COMMANDS, build_parser, main
from tinyld.demo import DemoConfig, run_demo
from tinyld.experiments.dpo_dynamics import DPODynamicsConfig
from tinyld.experiments.explain import ExplainConfig
from tinyld.experiments.forecasting import ForecastConfig
from tinyld.experiments.rl_dynamics import RLDynamicsConfig
from tinyld.experiments.sft_dynamics import SFTDynamicsConfig

CONFIGS = {"demo": DemoConfig, "sft-dynamics": SFTDynamicsConfig, "dpo-dynamics": DPODynamicsConfig,
           "forecast": ForecastConfig, "explain": ExplainConfig, "rl-dynamics": RLDynamicsConfig}
RUNS = {"demo": "tinyld.demo.run_demo", "sft-dynamics": "tinyld.experiments.sft_dynamics.run",
        "dpo-dynamics": "tinyld.experiments.dpo_dynamics.run", "forecast": "tinyld.experiments.forecasting.run",
        "explain": "tinyld.experiments.explain.run", "rl-dynamics": "tinyld.experiments.rl_dynamics.run"}


def test_demo_fast_mode_writes_results(tmp_path, capsys):
    res = run_demo(DemoConfig(fast=True, out=str(tmp_path)))
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["params"] == res["params"] and (tmp_path / "pretrain" / "last.pt").is_file()
    assert saved["pretrain"]["valley_depth"] < 0 and 0 < saved["pretrain"]["heldout_text"]["top1"] <= 1
    dec = saved["pretrain"]["decomposition"]
    assert dec["rel_err_seq"] < 0.05 and len(dec["predicted"]) == len(dec["families"]) == 12
    out = capsys.readouterr().out
    assert "valley depth" in out and "predicted" in out and "generations after SFT" in out


def test_env_command_reports_ok(capsys):
    assert main(["env", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "OK    GPT-2 tokenizer" in out and "core OK" in out and "124,439,808" in out


def test_user_errors_exit_2_with_one_line():
    r = subprocess.run([sys.executable, "-m", "tinyld", "demo", "--model", "huge", "--fast"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == ("error: demo --model 'huge' is neither a model name nor a file or folder that exists: give "
                        "tiny (the synthetic world's small GPT) or mini (a wider shape)\n")  # what demo takes


def test_bench_decompose_prints_json(capsys):
    assert main(["bench", "decompose", "--repeat", "1", "--warmup", "0", "--batch", "2", "--seq", "16"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ratio"] > 0 and res["rel_err_tokens"] < 0.1 and res["step_ms"] > 0
    assert res["trainer_step_ms"] > 0 and res["ratio_trainer"] == pytest.approx(
        res["predict_full_vocab_ms"] / res["trainer_step_ms"], rel=1e-2)


def test_bench_step_reports_both_paths_and_the_device(capsys):
    assert main(["bench", "step", "--repeat", "2", "--warmup", "1", "--batch", "2", "--seq", "16"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["device"] == "cpu" and res["device_name"] and res["tokens_per_step"] == 32
    plain, fast = res["plain"], res["fast"]
    assert (plain["fused_attention"], fast["fused_attention"]) == (False, True)
    assert not fast["bf16_autocast"] and not fast["compiled"]  # autocast and compile are for GPUs only
    for p in (plain, fast):
        assert p["tokens_per_s"] == pytest.approx(32 / (p["ms_per_step"] / 1e3), rel=0.01)
    assert res["speedup"] == pytest.approx(fast["tokens_per_s"] / plain["tokens_per_s"], abs=0.01)


def _flags(cmd: str) -> dict:
    """dest → argparse action of each flag of subcommand ``cmd`` (--help and the hidden old flags, which are parsed
    only to be refused, left out)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[cmd]._actions if a.option_strings and a.dest != "help"
            and a.help != argparse.SUPPRESS}


def _shown(value) -> str:
    """A default as the help should show it: lists space-separated, floats with :g."""
    if isinstance(value, list):
        return " ".join(_shown(v) for v in value)
    return format(value, "g") if isinstance(value, float) else str(value)


def test_the_config_commands_are_the_experiments():
    assert set(CONFIG_COMMANDS) == set(CONFIGS)


@pytest.mark.parametrize("cmd", sorted(CONFIGS))
def test_help_defaults_are_the_config_defaults(cmd, capsys):
    flags, checked = _flags(cmd), 0
    for f in dataclasses.fields(CONFIGS[cmd]):
        action = flags.get(f.name)
        if action is None or action.nargs == 0:  # no flag, or a switch: its help says what it does
            continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if default is not None:  # None: resolved later, see the next test
            assert action.help.endswith(f"(default {_shown(default)})"), (cmd, f.name, action.help)
            checked += 1
    assert checked >= 8
    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for action in flags.values():
        assert " ".join(action.help.split()) in out


@pytest.mark.parametrize("cmd", ["sft-dynamics", "dpo-dynamics"])
def test_help_of_a_default_resolved_later_says_what_it_resolves_to(cmd, tmp_path):
    flags, cls = _flags(cmd), CONFIGS[cmd]
    tiny, gpt2 = cls(), cls(model="gpt2")
    assert flags["pretrain_steps"].help.endswith(f"(default {tiny.pretrain_steps}; gpt2: {gpt2.pretrain_steps})")
    assert flags["device"].help.endswith(f"(default {tiny.device} for tiny, {gpt2.device} otherwise)")
    assert flags["model"].help.endswith(f"(default {tiny.model})")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")  # a GGUF path: the config takes a real LLM's defaults, reading no more
    real = cls(model=str(tmp_path / "m.gguf"))
    for field in ("epochs", "lr", "sft_epochs", "dpo_epochs"):  # the world model's default; the real LLM's
        if field in flags:
            assert flags[field].help.endswith(f"(default {_shown(getattr(tiny, field))}; smollm2: "
                                              f"{_shown(getattr(real, field))})"), (field, flags[field].help)


def test_rl_dynamics_help_shows_each_models_default(tmp_path):
    from tinyld.experiments.rl_dynamics.config import REAL_RL, TINY

    flags = _flags("rl-dynamics")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")  # a GGUF path takes a real LLM's defaults, reading no more
    tiny, real = RLDynamicsConfig(), RLDynamicsConfig(model=str(tmp_path / "m.gguf"))
    checked = 0
    for k in sorted(set(TINY) & set(REAL_RL) - {"pretrain_steps", "device"}):
        if k in flags:
            assert flags[k].help.endswith(f"(default {_shown(getattr(tiny, k))}; smollm2: "
                                          f"{_shown(getattr(real, k))})"), (k, flags[k].help)
            checked += 1
    assert checked >= 5 and flags["pretrain_steps"].help.endswith(f"(default {tiny.pretrain_steps})")
    assert (tiny.device, real.device, real.pretrain_steps) == ("cpu", "auto", None)


@pytest.mark.parametrize("cmd", sorted(CONFIGS))
def test_every_config_field_has_a_flag_and_flags_default_to_none(cmd):
    """A new config field needs a flag in __main__'s table, or a place among the command's internal fields."""
    names = {f.name for f in dataclasses.fields(CONFIGS[cmd]) if f.init}  # init=False: resolved from another field
    internal = set(CONFIG_COMMANDS[cmd].internal)
    flags = _flags(cmd)
    assert internal <= names
    lifecycle = {"overwrite", "resume"} if CONFIG_COMMANDS[cmd].used_by is not None else set()
    assert lifecycle <= set(flags) and lifecycle.isdisjoint(names)  # the run's folder, not its science
    assert set(flags) - lifecycle == names - internal  # every other flag fills a field of its own name
    for dest, action in flags.items():  # None: only the flags given reach the config
        assert action.default is (False if dest in {"fast"} | lifecycle else None), (cmd, dest)


@pytest.mark.parametrize("argv, expected", [
    (["sft-dynamics", "--seeds", "3", "4", "--no-attribution", "--lr", "0.01"],
     dict(seeds=[3, 4], attribution=False, lr=0.01)),
    (["sft-dynamics", "--conditions", "--grad-clip", "1", "--every", "2", "--attr-prompts", "2"],
     dict(conditions=True, grad_clip=1.0, every=2, attr_prompts=2)),
    (["sft-dynamics"], {}),
    (["demo", "--seed", "3", "--pretrain-lr", "0.05", "--model", "mini", "--threads", "1"],
     dict(seed=3, pretrain_lr=0.05, model="mini", threads=1)),
    (["demo", "--fast"], dict(fast=True)),
    (["dpo-dynamics", "--experiment", "extend", "--modes", "easy", "--beta", "0.5", "--pretrain-steps", "200"],
     dict(experiment="extend", modes=["easy"], beta=0.5, pretrain_steps=200)),
    (["forecast", "--lrs", "1e-3", "2e-3", "--epochs", "2", "--tau", "-2", "--curate-epochs", "3"],
     dict(lrs=[1e-3, 2e-3], epochs=[2], tau=-2.0, curate_epochs=3)),
])
def test_argv_builds_the_config(argv, expected, monkeypatch):
    got = []
    monkeypatch.delenv("TINYLD_FAST", raising=False)
    monkeypatch.setattr(RUNS[argv[0]], lambda cfg, **kw: got.append(cfg))  # the config, not the experiment
    assert main(argv) == 0
    cfg = got[0]
    assert cfg == CONFIGS[argv[0]](**expected)  # the flags given, and the config's defaults for the rest
    for name, value in expected.items():
        assert getattr(cfg, name) == value and type(getattr(cfg, name)) is type(value), name


def test_tinyld_fast_in_the_environment_is_fast(monkeypatch):
    got = []
    monkeypatch.setenv("TINYLD_FAST", "1")
    monkeypatch.setattr(RUNS["forecast"], lambda cfg, **kw: got.append(cfg))
    assert main(["forecast"]) == 0 and got[0].fast and got[0] == ForecastConfig(fast=True)


@pytest.mark.parametrize("argv, says", [
    (["forecast", "--experiment", "ches", "--lrs", "0.01"], "forecast --lrs is used by --experiment sweep / perturb"),
    (["forecast", "--experiment", "sweep", "--curate-lr", "0.01"], "--curate-lr is used by --experiment curate"),
    (["forecast", "--experiment", "ches", "--temperature", "1"], "not by --experiment ches"),
    (["dpo-dynamics", "--experiment", "dynamics", "--samples", "2"], "--samples is used by --experiment extend"),
    (["dpo-dynamics", "--experiment", "conditions", "--modes", "hard", "easy"], "runs in one world mode"),
    (["sft-dynamics", "--probes", "p.jsonl", "--modes", "easy"], "--modes choose the world's"),
    (["sft-dynamics", "--probes", "p.jsonl", "--conditions"], "--conditions choose the world's"),
    (["dpo-dynamics", "--pairs", "p.jsonl", "--modes", "easy"], "--modes choose the world's"),
    (["dpo-dynamics", "--pairs", "p.jsonl", "--experiment", "extend"], "with your own --pairs the run is --experiment"
     " dynamics"),
    (["bench", "step", "--seq", "100"], "the tiny preset's context is 64 tokens"),
    (["bench", "step", "--model", "gpt2", "--vocab", "5"], "gpt2 has its tokenizer's: leave it out"),
])
def test_a_flag_the_run_would_ignore_or_rewrite_is_refused(argv, says, monkeypatch, capsys):
    ran = []
    for cmd, path in RUNS.items():
        monkeypatch.setattr(path, lambda *a, **kw: ran.append(a))
    assert main(argv) == 2 and ran == []
    err = capsys.readouterr().err
    assert err.startswith("error: ") and says in " ".join(err.split()) and err.count("\n") == 1, err


def test_an_experiment_gets_the_command_that_continues_it(monkeypatch):
    got = []
    monkeypatch.setattr(RUNS["sft-dynamics"], lambda cfg, **kw: got.append(kw))
    assert main(["sft-dynamics", "--fast", "--out", "my out", "--overwrite"]) == 0
    assert got == [dict(overwrite=True, resume=False,
                        again="python -m tinyld sft-dynamics --fast --out 'my out' --resume")]


def test_fast_mode_says_what_it_changed(capsys):
    from tinyld.experiments.kit import header

    cfg = ForecastConfig(fast=True, data=[9999], epochs=[3])
    assert cfg.data == [32] and cfg.epochs == [3]  # recorded as used
    header("forecast", "t", cfg, dataclasses.asdict(cfg))
    note = [x for x in capsys.readouterr().out.splitlines() if "note:" in x]
    assert len(note) == 1 and "data 9999 → 32" in note[0] and " epochs" not in note[0], note  # 3 is kept
    assert SFTDynamicsConfig(fast=True, epochs=5).changed == ["fast mode uses pretrain_steps 3000 → 400"]
    assert SFTDynamicsConfig(epochs=50).changed == []


def test_env_says_an_absent_optional_package_is_not_installed_and_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    assert main(["env", "--device", "cpu"]) == 0  # the core is what decides
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if "optional: sklearn" in x]
    assert line == ["  --    optional: sklearn not installed (needed for lesson 5's digits; pip install \".[lessons]\")"]
    assert "FAIL" not in out and "core OK" in out
