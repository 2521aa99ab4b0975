"""Run by tests/test_ddp.py, with plain python (one process) or under torchrun (several gloo processes).

python tests/ddp_worker.py OUT STEPS [--resume], or train_all(OUT, STEPS, resume) in-process: trains a tiny GPT
on the world for STEPS steps of each task (pretraining, SFT, DPO; global batch 4; float64) with checkpoints in
OUT/<task>/, and rank 0 writes the final weights to OUT/<task>/weights.pt. With resume each task continues from
OUT/<task>/last.pt instead of starting over.
"""
import os
import sys

import torch

from tinyld import GPT, GPTConfig
from tinyld.data import PairData, PreferenceData, Reference, TextStream
from tinyld.train import Trainer, TrainConfig, dist_info
from tinyld.world import World

def train_all(out: str, steps: int, resume: bool = False) -> None:
    world = World(0)
    tok = world.tokenizer()
    examples = [it.example() for it in world.train_items()][:16]
    torch.manual_seed(0)
    ref_model = GPT(GPTConfig.preset("tiny", vocab_size=tok.vocab_size))
    data = {"pretrain": TextStream(tok, world.pretrain_docs(), 32, 4, seed=0),
            "sft": PairData(tok, examples, 4, 64, seed=0),
            "dpo": PreferenceData(tok, examples, 4, 64, seed=0,
                                  reference=Reference.compute(ref_model, tok, examples))}
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


if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")
    torch.set_num_threads(1)
    train_all(sys.argv[1], int(sys.argv[2]), "--resume" in sys.argv)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
