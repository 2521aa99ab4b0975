"""Data-parallel training under torchrun: which process am I, what do the processes share, how do they end.

Under ``torchrun --nproc_per_node=N`` each process (rank) trains on its contiguous share of every global batch
(:func:`shard`) and DistributedDataParallel averages the gradients (the Trainer wraps the model when a process
group is up). Only rank 0 measures, prints and writes files (:func:`is_main`); what the ranks must agree on but
only one should compute, such as on-policy samples, rank 0 makes and hands to all (:func:`from_rank0`).

A worker ends with :func:`close_distributed` (every rank waits for the others, then the process group is closed)
and :func:`end_worker` (the process ends at once). Without torchrun every function here is a no-op or answers for a
single process.
"""
from __future__ import annotations

import datetime
import os
import sys
import tempfile
from typing import Callable

import torch

from tinyld.data import Batch
from tinyld.preference import PrefBatch
from tinyld.rl import RLBatch
from tinyld.runtime import TinyldError


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless torch.distributed is initialised (e.g. under torchrun)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0, and always without torchrun: the process that measures, prints and writes files."""
    return dist_info()[0] == 0


def from_rank0(make: Callable[[], object]):
    """``make()`` run on rank 0 alone, its result (any picklable object) handed to every rank. For what the ranks
    must agree on exactly and only one should compute: on-policy samples that become the next batches."""
    rank, world = dist_info()
    if world == 1:
        return make()
    box = [make() if rank == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def first_to_say() -> bool:
    """Under torchrun: True in the first of this launch's processes on this machine to ask, False in the others
    (each asks once, when it is about to report an error). A marker file in the temp folder, made with O_EXCL, is
    keyed by the launcher's pid, port, run id and restart count; without torchrun, always True."""
    if os.environ.get("WORLD_SIZE", "1").strip() in ("", "1") or "RANK" not in os.environ:
        return True
    key = "-".join(os.environ.get(v, "") for v in ("MASTER_PORT", "TORCHELASTIC_RUN_ID",
                                                   "TORCHELASTIC_RESTART_COUNT"))
    path = os.path.join(tempfile.gettempdir(), f"tinyld-said-{os.getppid()}-{key}")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False
    except OSError:  # no temp folder to write: rank 0 says it
        return os.environ.get("RANK", "0") == "0"


def launched_processes() -> int:
    """How many processes torchrun launched (WORLD_SIZE), 1 without torchrun."""
    raw = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    try:
        n = int(raw)
    except ValueError:
        raise TinyldError(f"WORLD_SIZE={raw!r} is not a whole number: unset it, or let torchrun set it") from None
    if n < 1:
        raise TinyldError(f"WORLD_SIZE={n} must be at least 1: unset it, or let torchrun set it")
    return n


def init_distributed() -> tuple[int, int]:
    """Under torchrun (WORLD_SIZE > 1): start the process group once (NCCL when CUDA is available, gloo
    otherwise), put each rank on its own GPU, and silence the printing of every rank but 0. Returns
    (rank, world size); (0, 1) without torchrun."""
    if launched_processes() <= 1 or not torch.distributed.is_available():
        return 0, 1
    if not torch.distributed.is_initialized():
        missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise TinyldError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {', '.join(missing)} not: this is "
                              "not a torchrun launch. Start with torchrun --nproc_per_node=N, or unset WORLD_SIZE")
        cuda = torch.cuda.is_available()
        # the other ranks wait in the next collective while rank 0 measures: give them an hour, not NCCL's 10 min
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=60))
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    rank, world = dist_info()
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # the same lines would print N times
    return rank, world


def shard(batch, rank: int, world: int):
    """This rank's contiguous part of a global batch: B/world sequences, or for DPO B/world pairs (their chosen and
    their rejected rows). Every rank's loss is a mean over equally many sequences or pairs, so averaging the
    gradients over ranks (DDP does) gives the gradient of the global batch."""
    if world == 1:
        return batch
    if isinstance(batch, RLBatch):
        n, B = batch.adv.shape[0] // world, batch.adv.shape[0]
        if B % world:
            raise TinyldError(f"{world} processes share each step's samples, so there must be a multiple of "
                              f"{world}; this step has {B}")
        return batch.rows(slice(rank * n, (rank + 1) * n))
    B = batch.n_pairs if isinstance(batch, PrefBatch) else batch.idx.shape[0]
    if B % world:  # a remainder would be dropped, or a rank left with nothing: never silently
        raise TinyldError(f"{world} processes share each step's batch, so it must hold a multiple of {world} "
                          f"{'pairs' if isinstance(batch, PrefBatch) else 'sequences'}; this one holds {B}")
    if isinstance(batch, PrefBatch):
        n = B // world
        rows = slice(rank * n, (rank + 1) * n)
        idx, tg = ([torch.cat([t[:B][rows], t[B:][rows]]) for t in (batch.seqs.idx, batch.seqs.targets)])
        return PrefBatch(Batch(idx, tg, batch.seqs.tok), batch.ref_c[rows], batch.ref_r[rows], batch.index[rows])
    n = B // world
    return Batch(batch.idx[rank * n:(rank + 1) * n], batch.targets[rank * n:(rank + 1) * n], batch.tok)


def close_distributed(wait: bool = True) -> None:
    """End a torchrun process group cleanly; without one, do nothing.

    First a barrier (``wait``): once every rank has reached it, every collective before it has completed on every
    rank, and no rank is still training or writing (rank 0 measures long after the others are done). Then
    ``destroy_process_group``. Without the barrier, a rank that finished first and closed its group while the last
    collective was still in flight elsewhere aborted as it exited, in about one two-process run in four. After an
    error pass ``wait=False``: the other ranks may never arrive at the barrier."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()


def end_worker(code: int) -> None:
    """End this torchrun worker now, with exit status ``code``; call it after :func:`close_distributed`, when all
    is written.

    Once DistributedDataParallel has run, the gloo process group outlives ``destroy_process_group``: its worker
    threads (gloo_tcp_loop, pt_gloo_runloop) run until the process ends, and no Python object holds them. Tearing
    them down during the interpreter's exit aborted about one two-process run in twenty on a busy 2-core machine
    (SIGABRT, "terminate called without an active exception", in the main thread with no Python frame left). The
    worker's streams are flushed and the process ends with ``os._exit``, which skips that teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
