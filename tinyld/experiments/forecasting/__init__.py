"""Forecasting what finetuning will do (paper §5): pre-memorization train accuracy on a reasoning task (Kang et
al.) and CHES for preference pairs (Razin et al.).

``python -m tinyld forecast --experiment E`` with E one of

- ``sweep``: SFT of a base model pretrained on arithmetic text (:mod:`tinyld.reasoning`) under every combination
  of learning rate, epochs and number of training questions. At the end of every epoch, per training example:
  the accuracy of ``samples`` solutions sampled at temperature 0.8 (graded by the world) and the teacher-forced
  perplexity of its reference solution; and the test accuracy. Then one scatter of test accuracy against
  pre-memorization train accuracy over all (run, checkpoint) points, with the OLS line and R², beside the same fit
  for plain train accuracy, and R² for a range of τ.
- ``perturb``: at the end of every sweep run, the training questions reworded and their solutions opened with the
  other step order; accuracy on them, for examples of high and of low pre-memorization accuracy.
- ``curate``: new training questions added in rounds, i.i.d. from the pool or chosen like the training examples
  of low pre-memorization accuracy (nearest in the model's hidden-state embedding); test accuracy per added example.
- ``ches``: for the fact world's preference pairs (y⁺ against several kinds of y⁻), CHES (sum and
  length-normalised) and token edit distance, against whether DPO on that pair alone lowers log π(y⁺).
- ``all``: everything above.

Every result is over ≥ 3 seeds, with the optimizer and learning rate named and a claims table. The rules are
fixed before looking, as in :mod:`tinyld.experiments.sft_dynamics`.
Every seed and sweep run is kept as it finishes (:class:`tinyld.experiments.kit.RunFolder`): Ctrl-C loses none, and
``--resume`` continues.

The parts: :mod:`.config`, :mod:`.sweep` (the SFT runs, their measurements, sweep and perturb), :mod:`.curate`,
:mod:`.ches` and :mod:`.command` (the run).
"""
from tinyld.experiments.forecasting.ches import (CHES_KINDS, auc, ches_model, ches_seed, dpo_change, edit_distance,
                                                 judge_ches)
from tinyld.experiments.forecasting.command import figures, outputs, run
from tinyld.experiments.forecasting.config import EXPERIMENTS, MAX_NEW, ForecastConfig
from tinyld.experiments.forecasting.curate import curate_seed, embed, judge_curate, like_low_pm
from tinyld.experiments.forecasting.sweep import (accuracy, arithmetic_base, checkpoint, finetune, grade_samples,
                                                  judge_perturb, judge_sweep, ols, perturbed_accuracy, pm_curve,
                                                  pm_table, points_of, spread, sweep_run, sweep_seed)

__all__ = ["CHES_KINDS", "EXPERIMENTS", "ForecastConfig", "MAX_NEW", "accuracy", "arithmetic_base", "auc",
           "checkpoint", "ches_model", "ches_seed", "curate_seed", "dpo_change", "edit_distance", "embed", "figures",
           "finetune", "grade_samples", "judge_ches", "judge_curate", "judge_perturb", "judge_sweep", "like_low_pm",
           "ols", "outputs", "perturbed_accuracy", "pm_curve", "pm_table", "points_of", "run", "spread", "sweep_run",
           "sweep_seed"]
