"""Data-parallel training under torchrun (gloo on this CPU): two processes that each take half of every global
batch reach the same weights as one process that takes all of it, for pretraining, SFT, DPO and GRPO (each rank
samples the same groups and trains on its share); a run interrupted
and resumed under torchrun (with two processes, or with one) matches an uninterrupted one."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "ddp_worker.py"
TASKS = ("pretrain", "sft", "dpo", "grpo")
STEPS = 4


def torchrun(*args: str, cwd=None) -> str:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` with one thread per process; its stdout. A failure shows
    the whole output (the ranks' tracebacks and torchrun's report are long)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"torchrun exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-12000:]}",
                    pytrace=False)
    return r.stdout


def launch(out: Path, steps: int, procs: int, resume: bool = False, more: tuple = ()) -> None:
    """Train under torchrun with two processes, or (``procs`` = 1) here, without a launcher. ``more``: further
    (out, steps) runs in the same launch."""
    if procs == 1:
        sys.path.insert(0, str(WORKER.parent))
        try:
            from ddp_worker import train_all
        finally:
            sys.path.remove(str(WORKER.parent))
        with torch.random.fork_rng():
            train_all(str(out), steps, resume)
        return
    assert procs == 2
    jobs = [str(x) for job in ((out, steps), *more) for x in job]
    torchrun(str(WORKER), *jobs, *(["--resume"] if resume else []))


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
    launch(base / "two", STEPS, 2, more=[(base / "split", STEPS // 2)])  # and a run stopped halfway
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
    assert max_diff(one, {k: init[k] for k in one}) > 1e-3  # the weights moved far more than the tolerance


@pytest.mark.parametrize("task", TASKS)
def test_resumed_under_torchrun_matches_uninterrupted(runs, task):
    assert max_diff(weights(runs / "two", task), weights(runs / "split", task)) < 1e-12
    assert max_diff(weights(runs / "two", task), weights(runs / "split_one", task)) < 1e-9  # any number of ranks


def test_only_rank_0_logs(runs):
    lines = (runs / "two" / "sft" / "log.jsonl").read_text().splitlines()
    assert sum('"step"' in line and '"loss"' in line for line in lines) == STEPS  # one record per step, not two


def test_from_rank0_hands_rank_0s_object_to_every_rank(runs):
    """What the ranks must agree on (on-policy DPO's sampled pairs) is made once, on rank 0, and received by all."""
    for rank in (0, 1):
        rec = json.loads((runs / "two" / f"handed_{rank}.json").read_text())
        assert rec["got"] == {"pairs": [["x", "y+", "y-"]], "made_by": 0}
        assert rec["made_here"] == ([0] if rank == 0 else [])


def test_the_demo_runs_under_torchrun(tmp_path):
    """`torchrun -m tinyld demo`: one copy of the output, one demo.json, training that learns."""
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    out = torchrun("-m", "tinyld", "demo", "--fast", "--threads", "1", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert out.count("wrote ") == 1  # rank 1 prints nothing
    losses = [h["loss"] for h in json.loads((tmp_path / "out" / "demo.json").read_text())["pretrain"]["losses"]]
    assert losses[-1] < losses[0] - 1  # the two processes trained one model together


def test_an_experiment_runs_under_torchrun(tmp_path, monkeypatch):
    """`torchrun -m tinyld sft-dynamics`: the two processes share every SFT batch, rank 0 alone prints and writes, and
    the probe curves are those of one process (float32, summation order aside: within 1e-3 nats)."""
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    from tinyld.experiments.sft_dynamics import SFTDynamicsConfig, run

    args = ["--seeds", "0", "--modes", "easy", "--epochs", "2", "--pretrain-steps", "20", "--no-attribution",
            "--threads", "1"]
    out = torchrun("-m", "tinyld", "sft-dynamics", *args, "--out", "two", cwd=tmp_path)
    assert out.count("wrote ") == 1 and out.count("seed 0:") == 1  # rank 1 prints nothing
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["claims.txt", "fig3_easy.png", "manifest.json",
                                                                     "parts", "sft_dynamics.json", "track_easy_seed0.csv"]
    monkeypatch.chdir(tmp_path)  # the same cached base model (rank 0 saved it)
    one = run(SFTDynamicsConfig(seeds=[0], modes=["easy"], epochs=2, pretrain_steps=20, attribution=False,
                                threads=1, out=str(tmp_path / "one")))
    two = json.loads((tmp_path / "two" / "sft_dynamics.json").read_text())
    c1, c2 = (x["modes"]["easy"]["runs"][0]["curves"]["train"] for x in (one, two))
    assert c1.keys() == c2.keys()
    gap = max(abs(a - b) for f in c1 for a, b in zip(c1[f], c2[f]))
    moved = max(abs(c1[f][-1] - c1[f][0]) for f in c1)
    assert gap < 1e-3 < moved, (gap, moved)  # the same curves, and the run did move them


def test_on_policy_dpo_runs_under_torchrun(tmp_path):
    """`torchrun -m tinyld dpo-dynamics --experiment on-policy`: rank 0 samples each round's pairs and hands them to
    rank 1 (a mismatch in the number of steps would hang the group), and alone prints and writes."""
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    out = torchrun("-m", "tinyld", "dpo-dynamics", "--experiment", "on-policy", "--seeds", "0", "--modes", "easy",
                   "--sft-epochs", "1", "--dpo-epochs", "2", "--pretrain-steps", "5", "--samples", "2", "--threads",
                   "1", "--out", "two", cwd=tmp_path)
    assert out.count("wrote ") == 1 and out.count("on-policy pairs per round") == 1
    on = json.loads((tmp_path / "two" / "dpo_dynamics.json").read_text())["modes"]["easy"]["on_policy"]
    run = on["per_seed"][0]["on_run"]
    assert len(run["pairs_per_round"]) == 2 and run["steps"] > 0
    ys = run["curves"]["train"]["chosen"]
    assert len(ys) == 3 and ys[-1] != ys[0]  # measured before and after each round, and DPO moved y⁺


def test_rl_dynamics_runs_under_torchrun(tmp_path, monkeypatch):
    """`torchrun -m tinyld rl-dynamics`: both processes train every SFT and RL step (each samples the whole batch
    from the same weights and keeps its half), rank 0 alone measures, prints and writes; before RL the measurements
    are those of one process (the same SFT model: float32, summation order aside)."""
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    from tinyld.experiments.rl_dynamics import RLDynamicsConfig, run

    kw = dict(seeds=[0], losses=["grpo"], steps=2, per_step=2, group=4, pretrain_steps=20, sft_data=16,
              measure_every=1, threads=1)
    args = [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", *map(str, v if isinstance(v, list)
                                                                                 else [v]))]
    out = torchrun("-m", "tinyld", "rl-dynamics", *args, "--out", "two", cwd=tmp_path)
    assert out.count("wrote ") == 1 and out.count("seed 0: SFT model ready") == 1  # rank 1 prints nothing
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["claims.txt", "manifest.json", "parts",
                                                                     "rl_curves.png", "rl_dynamics.json"]
    monkeypatch.chdir(tmp_path)  # the same cached base model (rank 0 saved it)
    one = run(RLDynamicsConfig(**kw, out=str(tmp_path / "one")))["seeds"][0]
    two = json.loads((tmp_path / "two" / "rl_dynamics.json").read_text())["seeds"][0]
    assert two["fixed"] == one["fixed"] and [p["step"] for p in two["runs"]["grpo"]["points"]] == [0, 1, 2]
    h1, h2 = (x["runs"]["grpo"]["points"][0]["entropy"] for x in (one, two))
    assert abs(h1 - h2) < 1e-4, (h1, h2)
    assert len(two["runs"]["grpo"]["rewards"]) == 2 and two["runs"]["grpo"]["points"][-1] != two["runs"]["grpo"][
        "points"][0]


def test_forecast_refuses_torchrun_in_one_line_said_by_the_first_rank(monkeypatch, capsys, tmp_path):
    """Under torchrun every rank meets the refusal, or one meets an error alone (rank 1 first, say): the first to
    report says it, once, and the others stay quiet."""
    import tempfile

    from tinyld.__main__ import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the markers of who has spoken go here
    for port, ranks in (("29501", ("0", "1")), ("29502", ("1", "0"))):  # two launches; rank 1 first in the second
        monkeypatch.setenv("MASTER_PORT", port)
        said = []
        for rank in ranks:
            monkeypatch.setenv("RANK", rank)
            assert main(["forecast", "--fast"]) == 2
            said.append(capsys.readouterr().err)
        assert "forecast does not run under torchrun" in said[0] and said[1] == ""


@pytest.mark.parametrize("value, says", [("abc", "not a whole number"), ("0", "at least 1"),
                                         ("2", "not a torchrun launch")])
def test_a_bad_world_size_is_one_clear_line(monkeypatch, capsys, value, says):
    from tinyld.__main__ import main

    for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("WORLD_SIZE", value)
    assert main(["demo", "--fast", "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err



def test_shard_gives_each_rank_its_rows_and_refuses_a_remainder(world, wtok):
    """Two ranks' shards put back together are the global batch (for DPO: each rank's chosen rows are its pairs'
    chosen rows, its rejected rows theirs); a batch that does not split evenly is refused, never cut."""
    from tinyld.data import PairData
    from tinyld.distributed import shard
    from tinyld.preference import PreferenceData
    from tinyld.runtime import TinyldError

    examples = [it.example() for it in world.train_items()][:6]
    b = PairData(wtok, examples, 4, 64, seed=0).batch(0)
    halves = [shard(b, r, 2) for r in (0, 1)]
    assert torch.equal(torch.cat([h.idx for h in halves]), b.idx)
    assert torch.equal(torch.cat([h.targets for h in halves]), b.targets)
    p = PreferenceData(wtok, examples, 4, 64, seed=0).batch(0)
    for r, h in enumerate(shard(p, r, 2) for r in (0, 1)):
        assert h.index == p.index[2 * r: 2 * r + 2]
        assert torch.equal(h.seqs.idx[:2], p.seqs.idx[2 * r: 2 * r + 2])  # chosen rows of its two pairs
        assert torch.equal(h.seqs.idx[2:], p.seqs.idx[4 + 2 * r: 4 + 2 * r + 2])  # and their rejected rows
    odd = PreferenceData(wtok, examples, 5, 64, seed=0).batch(0)
    with pytest.raises(TinyldError, match="multiple of 2 pairs; this one holds 5"):
        shard(odd, 1, 2)
    with pytest.raises(TinyldError, match="multiple of 4 sequences; this one holds 6"):
        shard(PairData(wtok, examples, 6, 64, seed=0).batch(0), 0, 4)


def test_end_worker_flushes_and_exits_with_the_code():
    """end_worker ends the process at once (os._exit skips the interpreter's exit) with the given status, and what
    the worker printed without a newline still reaches its streams."""
    code = ("import sys; from tinyld.distributed import end_worker; print('out', end=''); "
            "print('err', end='', file=sys.stderr); import atexit; atexit.register(print, 'atexit ran'); end_worker(3)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out", "err")  # no atexit handler: the exit was skipped
