"""Experiments: one module each, with a config dataclass, a ``run(cfg) -> results`` that writes JSON and figures,
and a claims table (the paper's claim · what was measured per seed · held or not). The CLI only dispatches.

- :mod:`tinyld.experiments.sft_dynamics` — what SFT does to every other answer (paper §4), the hallucination
  mechanism, attribution, and the conditions sweep.
"""
