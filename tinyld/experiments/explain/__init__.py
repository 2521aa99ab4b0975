"""Where did the probability go? ``python -m tinyld explain --pairs FILE --model M`` for your own preference pairs.

Before training it forecasts, for every pair on its own, what a DPO step will do (:func:`tinyld.explain.
pair_forecasts`: log π of both responses, CHES, the one-step change of y⁺ split into the pull of its own half and
the push of y⁻'s half); then it runs a short DPO on all the pairs and watches each one (:func:`tinyld.explain.
watch_dpo`); the verdict says which pairs' y⁺ fell and how well each forecast ranked them (AUC, with the counts).

The parts: :mod:`.config` and :mod:`.command` (the run).
"""
from tinyld.experiments.explain.command import outputs, run, summary_table
from tinyld.experiments.explain.config import ExplainConfig

__all__ = ["ExplainConfig", "outputs", "run", "summary_table"]
