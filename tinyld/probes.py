"""Probe sets and the tracker: log π(y|x) of every response family, watched through training (paper §4).

A **probe** is one prompt x_u with a family of responses: its own chosen y_u⁺ and rejected y_u⁻, rephrases,
another prompt's answer, random text… (:data:`FAMILIES`, lessons/NOTES.md §4). A :class:`ProbeSet` holds the
probes of the training prompts (split ``train``: the paper's D_prob, finetuned on) and of held-out prompts (split
``test``: D_probtest). It comes from the world (:meth:`ProbeSet.from_world`) or from a JSONL file, one line per
prompt, so that you can bring your own::

    {"prompt": "…", "chosen": "…", "rejected": "…", "hum": "…", "split": "test"}

Two families need a model and are computed here. ``init`` (y_init) is the model's own greedy answer before
finetuning, frozen once (:meth:`ProbeSet.with_init`). ``star`` (y*) is the teacher-forced argmax along y⁺,
recomputed at every measurement: log π(y*|x) = Σ_m log max_v π(v | x, y⁺_<m).

:class:`Tracker` measures every (probe, family) pair at chosen steps of any training run, batched and without
gradients, into a tidy table: one row per step × prompt × family with the summed log-prob, the token count, the
mean top-1 probability along that response and its mean peakiness ‖A‖²_F = V − 2 + V‖π‖² (lessons/NOTES.md §1).
Each measurement also records the valley depth (:func:`tinyld.evaluate.valley_depth`).
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyld.data import IGNORE, Example, encode_example, jsonl_objects, make_batch
from tinyld.evaluate import check_healthy, greedy_answers, valley_depth
from tinyld.runtime import TinyldError, check_int, write_text_atomic
from tinyld.world import natural

FAMILIES = {  # key → the paper's symbol. Model-free families first, then the two a model defines.
    "chosen": "y_u⁺", "rejected": "y_u⁻",
    "gpts_chosen": "y_gpts⁺", "gpts_rejected": "y_gpts⁻",  # rephrase: same meaning
    "gptf_chosen": "y_gptf⁺", "gptf_rejected": "y_gptf⁻",  # same format, meaning changed
    "other_chosen": "y_j⁺, j≠u", "test_chosen": "y_test⁺",  # another training prompt's / a held-out prompt's answer
    "hum": "y_hum", "urnd_chosen": "y_urnd⁺", "rnd": "y_rnd", "random_tokens": "random tokens",  # unrelated text
    "init": "y_init", "star": "y*",
}
MODEL_FAMILIES = ("init", "star")
SPLITS = ("train", "test")
_RESERVED = ("prompt", "split", "meta")


@dataclass
class Probe:
    """One prompt and its responses, keyed by family (``chosen`` and ``rejected`` at least)."""

    prompt: str
    responses: dict[str, str]
    split: str = "train"  # train: finetuned on (D_prob) · test: held out (D_probtest)
    meta: dict = field(default_factory=dict)
    source: str = field(default="", compare=False)  # where it came from ("file:line"), for error messages


class ProbeSet:
    """Probes of the training and held-out prompts. Every probe carries the same families (``init`` may be
    missing where the model's first answer was empty)."""

    def __init__(self, probes: list[Probe], source: str = "probes"):
        probes = list(probes) if isinstance(probes, (list, tuple)) else probes
        if not isinstance(probes, list) or not probes or not all(isinstance(p, Probe) for p in probes):
            raise TinyldError(f"a ProbeSet needs a non-empty list of Probe objects ({source})")
        for n, p in enumerate(probes, 1):
            _check_probe(p.source or f"{source}: probe {n}", p)
        first = [k for k in probes[0].responses if k != "init"]
        for n, p in enumerate(probes, 1):
            where = p.source or f"{source}: probe {n}"
            keys = [k for k in p.responses if k != "init"]
            if set(keys) != set(first):
                missing, extra = set(first) - set(keys), set(keys) - set(first)
                raise TinyldError(f"{where} has families different from probe 1's: "
                                  + (f"missing {sorted(missing)}" if missing else "")
                                  + (" and " if missing and extra else "") + (f"extra {sorted(extra)}" if extra else "")
                                  + "; give every prompt the same families")
        if not any(p.split == "train" for p in probes):
            raise TinyldError(f"{source} has no probe with split 'train': nothing to finetune on")
        self.probes = probes

    def __len__(self) -> int:
        return len(self.probes)

    @property
    def families(self) -> list[str]:
        """The families measured, in :data:`FAMILIES` order first, then any of the user's own, then ``star``."""
        have = set().union(*(p.responses for p in self.probes))
        return [f for f in FAMILIES if f in have] + sorted(have - set(FAMILIES)) + ["star"]

    def split(self, name: str) -> list[Probe]:
        return [p for p in self.probes if p.split == name]

    def examples(self, split: str = "train") -> list[Example]:
        """(prompt, chosen, rejected) of one split, for a trainer."""
        return [Example(p.prompt, p.responses["chosen"], p.responses["rejected"], {"split": p.split, **p.meta})
                for p in self.split(split)]

    # ------------------------------------------------------------------ sources
    @classmethod
    def from_world(cls, world, chat=None) -> "ProbeSet":
        """The world's training prompts (split train) and held-out prompts (split test), every model-free family.
        ``chat``: a real LLM's tokenizer; each prompt is then its question as the user turn of the chat template,
        and every response natural text (:func:`tinyld.world.natural`)."""
        def probe(it, split):
            fams, meta = world.probes(it), {"name": it.name, "relation": it.relation}
            if chat is None:
                return Probe(it.prompt, fams, split, meta)
            return Probe(chat.chat([{"role": "user", "content": world.question(it)}]),
                         {k: natural(v) for k, v in fams.items()}, split, meta)
        probes = [probe(it, split) for split, items in (("train", world.train_items()), ("test", world.test_items()))
                  for it in items]
        return cls(probes, f"world {world.seed} ({world.mode}{', chat' if chat is not None else ''})")

    def as_chat(self, tok) -> "ProbeSet":
        """A copy whose prompts are user turns of ``tok``'s chat template (a prompt that already holds the
        template's first control token is kept as it is)."""
        return ProbeSet([Probe(p.prompt if p.prompt.startswith("<|im_start|>") else
                               tok.chat([{"role": "user", "content": p.prompt}]), dict(p.responses), p.split,
                               dict(p.meta), p.source) for p in self.probes])

    def subset(self, train: int, test: int, families: tuple[str, ...] | None = None) -> "ProbeSet":
        """The first ``train`` training probes and ``test`` held-out ones, with only ``families`` (None: all;
        chosen and rejected always): a probe set sized for a budget."""
        keep = lambda p: {k: v for k, v in p.responses.items()  # noqa: E731
                          if families is None or k in families or k in ("chosen", "rejected", "init")}
        return ProbeSet([Probe(p.prompt, keep(p), p.split, dict(p.meta), p.source)
                         for p in self.split("train")[:train] + self.split("test")[:test]])

    @classmethod
    def load(cls, path: str | Path) -> "ProbeSet":
        """A probe JSONL file: one object per line with ``prompt``, ``chosen``, ``rejected``, any further family
        keys (strings), an optional ``split`` (train, the default, or test) and an optional ``meta`` object.
        Every problem names its line; nothing half-loaded is returned."""
        probes = []
        first_keys, first_where = None, None
        for where, d in jsonl_objects(path):
            for key in ("prompt", "chosen", "rejected"):
                if key not in d:
                    raise TinyldError(f"{where}: missing '{key}' (a probe line needs prompt, chosen and rejected)")
            split = d.get("split", "train")
            if split not in SPLITS:
                raise TinyldError(f"{where}: 'split' must be 'train' or 'test', got {split!r}")
            meta = d.get("meta", {})
            if not isinstance(meta, dict):
                raise TinyldError(f"{where}: 'meta' must be a JSON object, got {type(meta).__name__}")
            for key, what in (("star", "y*, computed from the model at every measurement"),
                              ("init", "y_init, the model's own greedy answer, computed once before training")):
                if key in d:
                    raise TinyldError(f"{where}: '{key}' is {what}; remove it from the file (or give your own "
                                      "family another name)")
            responses = {k: v for k, v in d.items() if k not in _RESERVED}
            for k, v in [("prompt", d["prompt"])] + list(responses.items()):
                if not isinstance(v, str):
                    raise TinyldError(f"{where}: '{k}' must be a string, got {type(v).__name__} {v!r:.40}")
                if not v.strip():
                    raise TinyldError(f"{where}: '{k}' is empty; every prompt and response needs text")
            keys = set(responses) - {"init"}
            if first_keys is None:
                first_keys, first_where = keys, where
            elif keys != first_keys:
                missing, extra = sorted(first_keys - keys), sorted(keys - first_keys)
                raise TinyldError(f"{where}: its families differ from those of {first_where}: "
                                  + (f"missing {missing}" if missing else "")
                                  + (" and " if missing and extra else "") + (f"extra {extra}" if extra else "")
                                  + "; give every line the same keys")
            probes.append(Probe(d["prompt"], responses, split, meta, where))
        return cls(probes, str(path))

    def save(self, path: str | Path) -> Path:
        """Write the set as JSONL (the format :meth:`load` reads), atomically. ``init`` belongs to one model and is
        not written."""
        path = Path(path)
        lines = [json.dumps({"prompt": p.prompt, **{k: v for k, v in p.responses.items() if k != "init"},
                             "split": p.split,
                             **({"meta": p.meta} if p.meta else {})}) + "\n" for p in self.probes]
        return write_text_atomic(path, "".join(lines))

    def with_init(self, model, tok, max_new_tokens: int | None = None) -> "ProbeSet":
        """A copy with ``init`` = the model's greedy answer to each prompt, frozen now (before finetuning). Long
        enough for the longest chosen response plus four tokens unless ``max_new_tokens`` is given, and never
        longer than the model's context leaves room for. A prompt whose answer is empty (EOS first), or does not
        fit the context once re-tokenized, gets no ``init``."""
        if not hasattr(model, "config") or not callable(getattr(tok, "encode", None)):
            raise TinyldError("with_init(model, tok) needs a tinyld GPT and its tokenizer")
        block = model.config.block_size
        room = block - max(len(tok.encode(p.prompt)) for p in self.probes)  # prompt + answer + EOS ≤ block + 1
        if room < 1:
            raise TinyldError(f"a prompt fills the model's whole context (block_size={block}): shorten it")
        if max_new_tokens is None:
            max_new_tokens = max(len(tok.encode(p.responses["chosen"])) for p in self.probes) + 4
        answers = greedy_answers(model, tok, [p.prompt for p in self.probes], min(max_new_tokens, room))
        probes = []
        for p, a in zip(self.probes, answers):
            r = {k: v for k, v in p.responses.items() if k != "init"}
            if a.strip() and len(encode_example(tok, p.prompt, a)[0]) <= block + 1:
                r["init"] = a
            probes.append(Probe(p.prompt, r, p.split, dict(p.meta), p.source))
        return ProbeSet(probes)

    def check_fits(self, tok, block_size: int) -> None:
        """Every (prompt, response) pair must encode and fit the model's context: an error names the probe (its
        file and line when loaded from a file) and the family."""
        for n, p in enumerate(self.probes, 1):
            for fam, text in p.responses.items():
                try:
                    T = len(encode_example(tok, p.prompt, text)[0]) - 1
                except TinyldError as e:  # a word the tokenizer does not know, …
                    raise TinyldError(f"{p.source or f'probe {n}'}: prompt + '{fam}': {e}") from None
                if T > block_size:
                    raise TinyldError(f"{p.source or f'probe {n}'}: prompt + '{fam}' is {T + 1} tokens; the model "
                                      f"reads {T} of them but its context is block_size={block_size}: shorten it")


def _check_probe(where: str, p: Probe) -> None:
    if p.split not in SPLITS:
        raise TinyldError(f"{where}: split must be 'train' or 'test', got {p.split!r}")
    if not isinstance(p.responses, dict):
        raise TinyldError(f"{where}: responses must be a dict family → text, got {type(p.responses).__name__}")
    if not isinstance(p.meta, dict):
        raise TinyldError(f"{where}: meta must be a dict, got {type(p.meta).__name__}")
    bad = [k for k in p.responses if k in _RESERVED or not (isinstance(k, str) and k.strip())]
    if bad:
        raise TinyldError(f"{where}: {bad[0]!r} cannot name a family ({', '.join(_RESERVED)} are the probe's own "
                          "fields, and a name must be a non-empty string)")
    for key in ("chosen", "rejected"):
        if key not in p.responses:
            raise TinyldError(f"{where}: missing the '{key}' response")
    if "star" in p.responses:
        raise TinyldError(f"{where}: 'star' (y*) is computed from the model; do not give it as a response")
    for k, v in [("prompt", p.prompt)] + list(p.responses.items()):
        if not isinstance(k, str) or not isinstance(v, str) or not v.strip():
            raise TinyldError(f"{where}: '{k}' must be a non-empty string")


# --------------------------------------------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------------------------------------------


def position_stats(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sequence facts of a teacher-forced batch. logits (B, T, V), targets (B, T) with IGNORE (−100) off-response.

    Returns (B,) tensors: ``logp`` Σ_m log π(y_m) · ``logp_star`` Σ_m log max_v π (y*'s log-prob along y) ·
    ``tokens`` M · ``top1`` mean_m max_v π · ``peakiness`` mean_m ‖A_m‖²_F with ‖A‖²_F = V − 2 + V‖π‖²."""
    logp = F.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, -1)  # (B,T,V)
    mask = targets != IGNORE  # (B, T)
    at_y = logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0]  # (B, T)
    top = logp.amax(-1)  # (B, T) log max_v π
    V = logits.shape[-1]
    A2 = V - 2 + V * logp.exp().pow(2).sum(-1)  # (B, T)
    m = mask.double()
    n = m.sum(-1)  # (B,)
    return {"logp": (at_y * m).sum(-1), "logp_star": (top * m).sum(-1), "tokens": n,
            "top1": (top.exp() * m).sum(-1) / n, "peakiness": (A2 * m).sum(-1) / n}


class Tracker:
    """Record log π(y|x) of every probe and family at chosen steps of a training run.

    Use it as ``Trainer.run``'s callback (it measures when ``step % every == 0``) after one call of
    ``tracker.measure(model, 0)`` before training. ``rows`` is the tidy table (step × prompt × family);
    ``steps`` holds one record per measurement (valley depth, seconds spent measuring)."""

    def __init__(self, tok, probes: ProbeSet, every: int = 1, batch_size: int = 64, valley: bool = True):
        if not isinstance(probes, ProbeSet):
            raise TinyldError(f"Tracker needs a ProbeSet (ProbeSet.from_world(world) or ProbeSet.load(path)), got "
                              f"{type(probes).__name__}")
        self.tok, self.probes = tok, probes
        self.every = check_int("Tracker every", every, 1)
        self.batch_size = check_int("Tracker batch_size", batch_size, 1)
        self.valley = valley
        self.rows: list[dict] = []
        self.steps: list[dict] = []
        self.seconds = 0.0  # total time spent measuring
        pairs = [(i, p.split, fam, p.prompt, text) for i, p in enumerate(probes.probes)
                 for fam, text in p.responses.items()]  # "star" is read off the "chosen" sequences
        self._pairs = sorted(pairs, key=lambda c: len(c[3]) + len(c[4]))  # similar lengths share a batch: less padding
        self._batches: tuple[int | None, list] = (None, [])  # tokenized once per block size, reused every time

    def __call__(self, trainer, step: int) -> None:
        if step % self.every == 0 or step == trainer.cfg.steps:
            self.measure(trainer.model, step)

    @torch.no_grad()
    def measure(self, model, step: int) -> list[dict]:
        """Measure every pair at the model's current weights; append and return the new rows."""
        t0 = time.perf_counter()
        check_healthy(model)
        was_training = model.training
        model.eval()
        dev = next(model.parameters()).device
        new = []
        try:
            for chunk, b in self._batched(model.config.block_size):
                b = b.to(dev)
                st = position_stats(model(b.idx), b.targets)
                for k, (i, split, fam, _, _) in enumerate(chunk):
                    row = {"step": step, "split": split, "prompt_id": i, "family": fam, "logp": st["logp"][k].item(),
                           "tokens": int(st["tokens"][k]), "top1": st["top1"][k].item(),
                           "peakiness": st["peakiness"][k].item()}
                    new.append(row)
                    if fam == "chosen":  # y*: the argmax at each position of y⁺, same positions
                        new.append({**row, "family": "star", "logp": st["logp_star"][k].item()})
            rec = {"step": step}
            if self.valley:
                rec["valley_depth"] = valley_depth(model, self.tok)
        finally:
            model.train(was_training)
        self.rows += new
        rec["seconds"] = time.perf_counter() - t0
        self.seconds += rec["seconds"]
        self.steps.append(rec)
        return new

    def _batched(self, block_size: int) -> list:
        if self._batches[0] != block_size:
            chunks = [self._pairs[s: s + self.batch_size] for s in range(0, len(self._pairs), self.batch_size)]
            self._batches = (block_size, [(c, make_batch(self.tok, [x[3] for x in c], [x[4] for x in c], block_size))
                                          for c in chunks])
        return self._batches[1]

    # ------------------------------------------------------------------ views
    def curve(self, family: str, split: str = "train", key: str = "logp") -> tuple[list[int], list[float]]:
        """(steps, mean over prompts of ``key``: logp, top1 or peakiness) for one family and split."""
        acc: dict[int, list[float]] = {}
        for r in self.rows:
            if r["family"] == family and r["split"] == split:
                acc.setdefault(r["step"], []).append(r[key])
        steps = sorted(acc)
        return steps, [sum(acc[s]) / len(acc[s]) for s in steps]

    def save(self, path: str | Path, config: dict | None = None) -> Path:
        """The table as ``.json`` (rows, steps, families, config) or ``.csv`` (rows only), written atomically."""
        path = Path(path)
        if path.suffix not in (".json", ".csv"):
            raise TinyldError(f"Tracker.save writes .json or .csv, got {path.name!r}")
        if path.suffix == ".json":
            text = json.dumps({"config": config or {}, "families": {f: FAMILIES.get(f, f) for f in
                                                                    self.probes.families},
                               "steps": self.steps, "rows": self.rows})
        else:
            import io
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=["step", "split", "prompt_id", "family", "logp", "tokens", "top1",
                                                "peakiness"])
            w.writeheader()
            w.writerows(self.rows)
            text = buf.getvalue()
        return write_text_atomic(path, text)
