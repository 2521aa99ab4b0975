"""Play one rank of a torchrun group inside this process, with no process group: ``tinyld.distributed.dist_info``
answers (rank, 1), so the experiments take rank 0's branches or the other ranks', while the Trainer trains alone.
Used to check that the ranks other than 0 join every training run of an experiment and measure nothing."""
import importlib
import pkgutil

import torch

import tinyld.distributed
from tinyld.model import GPT
from tinyld.train import Trainer


def as_rank(mp, rank: int) -> None:
    mp.setattr(tinyld.distributed, "dist_info", lambda: (rank, 1))


def record_training(mp) -> list:
    """Every Trainer.run from now on, pretraining aside (a first run caches its base models, a second reads them):
    (task, steps, optimizer, lr, a digest of the weights after it)."""
    runs, real = [], Trainer.run

    def run(self, *a, **kw):
        out = real(self, *a, **kw)
        if self.cfg.task != "pretrain":
            digest = sum(float(p.detach().double().sum()) * (i + 1) for i, p in enumerate(self.model.parameters()))
            runs.append((self.cfg.task, self.cfg.steps, self.cfg.optimizer, self.cfg.lr, digest))
        return out
    mp.setattr(Trainer, "run", run)
    return runs


def forbid(mp, targets) -> None:
    """Each (owner, name) raises when called."""
    def refuse(*a, **kw):
        raise AssertionError("a rank other than 0 measured")
    for owner, name in targets:
        mp.setattr(owner, name, refuse)


def forbid_in(mp, package, names) -> None:
    """Each of ``names`` raises when called from any module of ``package`` (an experiment package: each of its
    modules calls the names it imported). A name that no module holds is an error: the list has gone stale."""
    modules = [package] + [importlib.import_module(f"{package.__name__}.{m.name}")
                           for m in pkgutil.iter_modules(package.__path__)]
    found = {n for mod in modules for n in names if hasattr(mod, n)}
    assert found == set(names), sorted(set(names) - found)
    forbid(mp, [(mod, n) for mod in modules for n in names if hasattr(mod, n)])


def forward_passes_without_grad(mp) -> list:
    """The shapes of the GPT forward passes run with autograd off (measurements; training runs with it on), except
    the Trainer's own check that its last update left finite logits, which every rank makes."""
    seen, real, checking = [], GPT.forward, []
    real_check = Trainer.not_finite

    def forward(self, idx):
        if not torch.is_grad_enabled() and not checking:
            seen.append(tuple(idx.shape))
        return real(self, idx)

    def check(self):
        checking.append(True)
        try:
            return real_check(self)
        finally:
            checking.pop()
    mp.setattr(GPT, "forward", forward)
    mp.setattr(Trainer, "not_finite", check)
    return seen
