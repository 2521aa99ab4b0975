"""Experiments: one module each, with a config dataclass, a ``run(cfg) -> results`` that writes JSON and figures,
and a claims table (the paper's claim · what was measured per seed · held or not). The CLI only dispatches.

- :mod:`tinyld.experiments.sft_dynamics` — what SFT does to every other answer (paper §4), the hallucination
  mechanism, attribution, and the conditions sweep.
- :mod:`tinyld.experiments.dpo_dynamics` — what off-policy DPO does to every answer (paper §3–§4), extend,
  on- vs off-policy DPO, the repeater, and the conditions of squeezing.
- :mod:`tinyld.experiments.forecasting` — forecasting what finetuning will do (paper §5): pre-memorization train
  accuracy and CHES.
- :mod:`tinyld.experiments.common` — what they share (config checks, the world model and its SFT stage, the regime,
  the per-family figure, claims and their table, strict JSON); no experiment imports another.
"""
