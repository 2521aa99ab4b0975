"""Watch your probe pairs inside a TRL run: :class:`ProbeCallback`, a ``transformers.TrainerCallback``.

::

    from tinyld.integrations.trl import ProbeCallback

    probe = ProbeCallback("my_pairs.jsonl", every=10, out="probe_out")
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=train,
                         processing_class=tokenizer, callbacks=[probe])
    trainer.train()  # logs probe/chosen, probe/rejected, probe/star, probe/mass_* beside TRL's own metrics

Every ``every`` optimizer steps (and before the first) the callback measures, on any Hugging Face causal LM, for
every probe pair: log π(y⁺|x), log π(y⁻|x), log π(y*|x) (the teacher-forced argmax along y⁺) and where the
probability sits at the response positions (:func:`tinyld.squeeze.token_mass`: own token, the other response's
token, the argmax, the rest). The pairs are tokenized as TRL's DPOTrainer tokenizes plain-text pairs: prompt +
response + the EOS token as one text, the completion starting where it parts from the tokenized prompt; a pair
given as chat messages goes through the tokenizer's chat template as TRL does. The model is measured as the trainer
runs it: under mixed precision (TRL's default bf16), its forward is autocast, so the numbers are the ones TRL's own
``logps/chosen`` shows, not float32's.

At the end of training, with ``out`` set, it writes ``probes.jsonl`` (the tidy table: one row per step and pair),
``explain.json`` (the result ``python -m tinyld explain`` writes, with no forecasts: they need tinyld's own model
code) and ``report.html`` (explain's page, drawn by the same :func:`tinyld.experiments.explain.report.report_html`).

Needs ``transformers`` (``pip install "tinyld[trl]"`` brings it with TRL); nothing here imports TRL itself.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from tinyld.data import Example, collate
from tinyld.experiments.explain.report import report_html
from tinyld.explain import PairBatch, watched_result
from tinyld.probes import ProbeSet
from tinyld.runtime import TinyldError, check_int
from tinyld.squeeze import MASS_CLASSES


def _examples(pairs) -> list[Example]:
    if isinstance(pairs, (str, Path)):
        probes = ProbeSet.load(pairs)  # read once; every line, whichever split it names
        return probes.examples("train") + probes.examples("test")
    out = []
    for k, p in enumerate(pairs or []):
        if isinstance(p, Example) and p.rejected is not None:
            out.append(p)
        elif isinstance(p, dict) and all(key in p for key in ("prompt", "chosen", "rejected")):
            out.append(Example(p["prompt"], p["chosen"], p["rejected"]))
        else:
            raise TinyldError(f"ProbeCallback pair {k}: give a dict with prompt, chosen and rejected (or an Example "
                              f"with a rejected response), got {type(p).__name__}")
    if not out:
        raise TinyldError("ProbeCallback needs at least one probe pair: a JSONL file, or a list of dicts with "
                          "prompt, chosen and rejected")
    return out


def _ids(tok, text) -> list[int]:
    if isinstance(text, list):  # chat messages
        return list(tok.apply_chat_template(text, tokenize=True, return_dict=False))
    return list(tok(text)["input_ids"])


def pair_ids(tok, e: Example) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids as TRL's DPOTrainer makes them: plain text gets the EOS token appended
    to each response and is tokenized with the prompt as one text; the completion starts where the tokenized
    prompt and prompt+response first differ. Chat messages go through the chat template (the prompt with the
    generation prompt), with no EOS added."""
    if isinstance(e.prompt, list):
        prompt = list(tok.apply_chat_template(e.prompt, tokenize=True, add_generation_prompt=True, return_dict=False))
        full = [_ids(tok, e.prompt + r) for r in (e.chosen, e.rejected)]
    else:
        eos = tok.eos_token or ""
        prompt = _ids(tok, e.prompt)
        full = [_ids(tok, e.prompt + (r if r.endswith(eos) else r + eos)) for r in (e.chosen, e.rejected)]
    n = min(_common(prompt, f) for f in full)
    return prompt[:n], full[0][n:], full[1][n:]


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class ProbeCallback(TrainerCallback):
    """Measure probe pairs during a Hugging Face / TRL training run (see the module's docstring).

    ``pairs``: a probe JSONL file (prompt, chosen, rejected per line) or a list of such dicts; ``tokenizer``: the
    run's tokenizer (None: the trainer's ``processing_class``); ``every``: measure after every ``every`` optimizer
    steps; ``out``: a folder for probes.jsonl, explain.json and report.html at the end (None: write nothing);
    ``top``: how many most-gaining tokens the page names per position. ``history`` holds every measurement."""

    def __init__(self, pairs, tokenizer=None, every: int = 1, out: str | Path | None = None, top: int = 3):
        self.examples = _examples(pairs)
        self.tokenizer, self.out = tokenizer, None if out is None else Path(out)
        self.every, self.top = check_int("ProbeCallback every", every, 1), check_int("ProbeCallback top", top, 1)
        self.history: list[dict] = []
        self.steps: list[int] = []
        self._pb = self._lp0 = self._lp1 = None
        self._info: dict = {}

    # ----------------------------------------------------------------------------------------------- measuring
    def _batch(self, tok, device) -> PairBatch:
        if tok is None or not callable(tok):
            raise TinyldError("ProbeCallback needs the run's tokenizer: pass tokenizer=…, or give the trainer a "
                              "processing_class")
        tok = getattr(tok, "tokenizer", tok)  # a processor wraps its tokenizer
        if len(tok) == 0 or not tok("a b")["input_ids"]:
            raise TinyldError(f"ProbeCallback: the tokenizer {type(tok).__name__} is empty (size {len(tok)}), so it "
                              "turns every text into nothing; build it so that len(tokenizer) is the model's "
                              "vocabulary (GPT2TokenizerFast(vocab_file=…, merges_file=…) gives an empty one)")
        seqs = []
        for side in (1, 2):
            for k, e in enumerate(self.examples):
                ids = pair_ids(tok, e)
                if not ids[side]:
                    raise TinyldError(f"ProbeCallback pair {k}: its {('chosen', 'rejected')[side - 1]} response "
                                      "is empty once tokenized")
                seqs.append((ids[0] + ids[side], len(ids[0])))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id or 0
        self._tok = tok
        return PairBatch(collate(seqs, pad).to(device), len(self.examples))

    def measure(self, model, step: int, full: bool = False) -> dict:
        """Measure the pairs on ``model`` now, as step ``step``; returns the metrics it logs."""
        training = model.training
        try:
            res, lp = self._pb.measure(model, full=full)
        finally:
            model.train(training)
        self.history.append(res)
        self.steps.append(step)
        if full:
            self._lp0 = lp if self._lp0 is None else self._lp0
            self._lp1 = lp
        return self.metrics()

    def metrics(self) -> dict:
        """The last measurement as ``probe/…`` metrics: the mean over the pairs of log π(y⁺), log π(y⁻), log π(y*)
        and the mass split at y⁺'s positions."""
        last, n = self.history[-1], len(self.examples)
        out = {f"probe/{k}": sum(last[k]) / n for k in ("chosen", "rejected", "star")}
        out.update({f"probe/mass_{c}": sum(m["chosen"][c] for m in last["mass"]) / n for c in MASS_CLASSES})
        return out

    # ----------------------------------------------------------------------------------------------- the hooks
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
        self._pb = self._batch(self.tokenizer if self.tokenizer is not None else processing_class,
                               next(model.parameters()).device)
        self._info = {"model": getattr(model, "name_or_path", type(model).__name__) or type(model).__name__,
                      "lr": args.learning_rate, "optimizer": str(args.optim), "steps": args.max_steps,
                      "batch_size": args.per_device_train_batch_size, "beta": getattr(args, "beta", None),
                      "loss": "+".join(getattr(args, "loss_type", None) or ["?"]), "every": self.every}
        self.measure(model, state.global_step, full=True)

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step % self.every == 0:
            self.measure(model, state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        """Put the last measurement beside the trainer's own metrics (in ``logs`` for the reporters and in the
        trainer's log history)."""
        if not self.history or logs is None:
            return
        metrics = self.metrics()
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)

    def on_train_end(self, args, state, control, model=None, **kw):
        if self.steps[-1] != state.global_step:
            self.measure(model, state.global_step, full=True)
        else:  # the last measurement is the last step's: take the full log-probs for the token changes from it
            self.history.pop()
            self.steps.pop()
            self.measure(model, state.global_step, full=True)
        if self.out is not None:
            self.write(self.out)

    # ----------------------------------------------------------------------------------------------- the files
    def result(self) -> dict:
        """What explain's JSON holds, from this run's measurements (no forecasts: they need tinyld's own model)."""
        run = watched_result(self.history, self.steps, self._pb, self._tok, self._lp0, self._lp1, self.top)
        pairs = [{"prompt": e.prompt if isinstance(e.prompt, str) else json.dumps(e.prompt), "chosen": str(e.chosen),
                  "rejected": str(e.rejected)} for e in self.examples]
        return {"config": {**self._info, "source": "tinyld.integrations.trl.ProbeCallback"}, "versions": None,
                "pairs": pairs, "forecasts": None, "run": run, "verdict": None, "fixes": None, "stopped": None}

    def table(self) -> list[dict]:
        """The tidy table: one row per measured step and pair."""
        return [{"step": s, "pair": k, "chosen": r["chosen"][k], "rejected": r["rejected"][k], "star": r["star"][k],
                 "mass_chosen": r["mass"][k]["chosen"], "mass_rejected": r["mass"][k]["rejected"]}
                for s, r in zip(self.steps, self.history) for k in range(len(self.examples))]

    def write(self, out: str | Path) -> Path:
        """probes.jsonl, explain.json and report.html into ``out``; returns the page's path."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.table()), encoding="utf-8")
        result = self.result()
        (out / "explain.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        (out / "report.html").write_text(report_html(result), encoding="utf-8")
        return out / "report.html"
