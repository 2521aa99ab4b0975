"""Run by tests/test_ddp.py, with plain python (one process) or under torchrun (several gloo processes).

python tests/ddp_worker.py OUT STEPS [OUT STEPS …] [--resume], or train_all(OUT, STEPS, resume) in-process: trains a
tiny GPT on the world for STEPS steps of each task (pretraining, SFT, DPO, GRPO; global batch 4; float64) with
checkpoints in OUT/<task>/, and rank 0 writes the final weights to OUT/<task>/weights.pt; several OUT STEPS pairs
share one launch. With resume each task continues from OUT/<task>/last.pt instead of starting over.
"""
import os
import sys

import torch

from tinyld import GPT, GPTConfig
from tinyld.data import PairData, TextStream
from tinyld.distributed import close_distributed, dist_info, end_worker, from_rank0
from tinyld.preference import PreferenceData, Reference
from tinyld.rl_data import RLData
from tinyld.train import TrainConfig, Trainer
from tinyld.world import World


def no_repeats(k: int, text: str) -> float:
    """A reward that varies within a group even for an untrained model: 1 for an answer that repeats no word."""
    return float(len(set(text.split())) == len(text.split()))


def train_all(out: str, steps: int, resume: bool = False) -> None:
    world = World(0)
    tok = world.tokenizer()
    examples = [it.example() for it in world.train_items()][:16]
    torch.manual_seed(0)
    ref_model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size))
    data = {"pretrain": TextStream(tok, world.pretrain_docs(), 32, 4, seed=0),
            "sft": PairData(tok, examples, 4, 64, seed=0),
            "dpo": PreferenceData(tok, examples, 4, 64, seed=0,
                                  reference=Reference.compute(ref_model, tok, examples)),
            "grpo": RLData(tok, [e.prompt for e in examples], no_repeats, group=2, per_step=2, loss="dr_grpo", seed=0,
                           max_new_tokens=6, block_size=64)}
    for task, d in data.items():
        folder = os.path.join(out, task)
        cfg = TrainConfig(task=task, steps=steps, optimizer="adamw", lr=1e-2, seed=0, out_dir=folder, log_every=1,
                          progress=False)
        if resume:
            tr = Trainer.resume(os.path.join(folder, "last.pt"), d, tok, steps=steps, out_dir=folder)
        else:
            torch.manual_seed(0)
            tr = Trainer(GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size)).double(), d, cfg, tok)  # float64
        tr.run(overwrite=not resume)
        if dist_info()[0] == 0:
            torch.save({k: v.clone() for k, v in tr.model.state_dict().items()}, os.path.join(folder, "weights.pt"))


def hand_out(out: str) -> None:
    """from_rank0: every rank writes what it received, and whether its own ``make`` ran, to OUT/handed_<rank>.json."""
    import json

    rank, made = dist_info()[0], []
    got = from_rank0(lambda: made.append(rank) or {"pairs": [("x", "y+", "y-")], "made_by": rank})
    with open(os.path.join(out, f"handed_{rank}.json"), "w") as f:
        json.dump({"got": got, "made_here": made}, f)


if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")
    torch.set_num_threads(1)
    jobs = [a for a in sys.argv[1:] if a != "--resume"]
    for out, steps in zip(jobs[::2], jobs[1::2]):  # OUT STEPS [OUT STEPS …]: one launch, several runs
        train_all(out, int(steps), "--resume" in sys.argv)
    hand_out(jobs[0])
    if torch.distributed.is_initialized():  # every rank waits for the others, the group closes, the worker ends
        close_distributed()
        end_worker(0)
