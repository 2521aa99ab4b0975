"""The command line: env check, the main job (fast mode), user errors without tracebacks, benchmarks."""
import json
import subprocess
import sys

import pytest

from tinyld.__main__ import main
from tinyld.demo import DemoConfig, run_demo


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
    r = subprocess.run([sys.executable, "-m", "tinyld", "demo", "--preset", "huge", "--fast"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == "error: demo --preset: unknown preset 'huge'; choose one of tiny, mini\n"


def test_bench_decompose_prints_json(capsys):
    assert main(["bench", "decompose", "--repeat", "1", "--warmup", "0", "--batch", "2", "--seq", "16"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ratio"] > 0 and res["rel_err_tokens"] < 0.1 and res["step_ms"] > 0


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
