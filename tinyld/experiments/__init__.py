"""Experiments: one package each, with a config dataclass, a ``run(cfg) -> results`` that writes JSON and figures,
and a claims table (the paper's claim · what was measured per seed · held or not). The CLI only dispatches.

- :mod:`tinyld.experiments.sft_dynamics` — what SFT does to every other answer (paper §4), the hallucination
  mechanism, attribution, and the conditions sweep.
- :mod:`tinyld.experiments.dpo_dynamics` — what off-policy DPO does to every answer (paper §3–§4), extend,
  on- vs off-policy DPO, the repeater, and the conditions of squeezing.
- :mod:`tinyld.experiments.forecasting` — forecasting what finetuning will do (paper §5): pre-memorization train
  accuracy and CHES.
- :mod:`tinyld.experiments.kit` — the life of a run (:class:`~tinyld.experiments.kit.RunFolder`: one run per
  folder, a manifest, each seed kept as it finishes, ``--resume``, ``--overwrite``), the header, claims that
  format their own measurement, the claims and conditions tables, strict JSON, mean ± sd.
- :mod:`tinyld.experiments.common` — the science they share (config checks, the world model and its SFT stage,
  the regime, the per-family figure); no experiment imports another.

A new experiment is its science plus calls into the kit: ``run(cfg)`` opens a RunFolder, computes each seed with
:meth:`~tinyld.experiments.kit.RunFolder.part`, judges its claims and ends with
:meth:`~tinyld.experiments.kit.RunFolder.finish`.
"""
