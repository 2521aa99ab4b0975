"""Data-parallel training under torchrun (gloo on this CPU): two processes that each take half of every global
batch reach the same weights as one process that takes all of it, for pretraining, SFT and DPO; a run interrupted
and resumed under torchrun (with two processes, or with one) matches an uninterrupted one."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "ddp_worker.py"
TASKS = ("pretrain", "sft", "dpo")
STEPS = 4


def launch(out: Path, steps: int, procs: int, resume: bool = False) -> None:
    cmd = [sys.executable, str(WORKER), str(out), str(steps)] + (["--resume"] if resume else [])
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] + cmd[1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])


def weights(out: Path, task: str) -> dict:
    return torch.load(out / task / "weights.pt", weights_only=True)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    base = tmp_path_factory.mktemp("ddp")
    launch(base / "one", STEPS, 1)
    launch(base / "two", STEPS, 2)
    launch(base / "split", STEPS // 2, 2)
    shutil.copytree(base / "split", base / "split_one")
    launch(base / "split", STEPS, 2, resume=True)
    launch(base / "split_one", STEPS, 1, resume=True)  # a 2-process checkpoint resumed by one process
    return base


@pytest.mark.parametrize("task", TASKS)
def test_two_processes_match_one(runs, task):
    from tinyld import GPT, GPTConfig

    one, two = weights(runs / "one", task), weights(runs / "two", task)
    assert max_diff(one, two) < 1e-9  # the same updates, up to float64 summation order
    torch.manual_seed(0)
    init = GPT(GPTConfig.preset("tiny", vocab_size=one["wte.weight"].shape[0])).state_dict()
    assert max_diff(one, {k: init[k] for k in one}) > 1e-2  # the weights moved far more than the tolerance


@pytest.mark.parametrize("task", TASKS)
def test_resumed_under_torchrun_matches_uninterrupted(runs, task):
    assert max_diff(weights(runs / "two", task), weights(runs / "split", task)) < 1e-12
    assert max_diff(weights(runs / "two", task), weights(runs / "split_one", task)) < 1e-9  # any number of ranks


def test_only_rank_0_logs(runs):
    lines = (runs / "two" / "sft" / "log.jsonl").read_text().splitlines()
    assert sum('"step"' in line and '"loss"' in line for line in lines) == STEPS  # one record per step, not two
