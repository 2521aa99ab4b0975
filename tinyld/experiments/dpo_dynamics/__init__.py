"""What off-policy DPO does to every answer (paper §3–§4, Fig. 4), the extend fix, on- vs off-policy DPO, the
repeater effect, and the conditions under which squeezing appears.

``python -m tinyld dpo-dynamics --experiment E`` with E one of

- ``dynamics``: SFT on y⁺, then off-policy DPO on the world's (x, y⁺, y⁻) pairs with the SFT model as reference.
  The probe tracker follows every family; :func:`tinyld.squeeze.token_mass` follows where the probability goes at
  the positions of y⁺ and y⁻; greedy answers after every DPO epoch give the repetition measure (the repeater).
- ``extend``: the baseline spends its SFT steps on y⁺ alone; extend spends the same number on y⁺ and y⁻ (each
  prompt twice). Then DPO from each, with that model as reference. Reported: log π(y⁻) during SFT, squeezing during
  DPO, and a win rate judged by the world's oracle on sampled answers to held-out prompts.
- ``on-policy``: the same SFT model, DPO whose pairs are sampled from the current policy every epoch and ranked by
  the world's oracle (which knows every fact), against off-policy DPO.
- ``conditions``: the dynamics claims under a shallower valley (fewer pretraining steps), plain SGD, another β and
  other learning rates, in one world mode.
- ``all``: everything above.

Every result is over ≥ 3 seeds in both world modes (hard: the paper's regime; easy), with the regime (valley
depth, log π(y⁺), …) beside it, the optimizer and learning rate named, and a claims table. The rules are fixed
before looking, as in :mod:`tinyld.experiments.sft_dynamics`.
Every seed is kept as it finishes (:class:`tinyld.experiments.kit.RunFolder`): Ctrl-C loses none, and ``--resume``
continues.

The parts: :mod:`.config`, :mod:`.stages` (base model, SFT stage, measurements, one DPO run), :mod:`.claims`, one
module per experiment (:mod:`.dynamics`, :mod:`.extend`, :mod:`.on_policy`, :mod:`.conditions`) and
:mod:`.command` (the run).
"""
from tinyld.experiments.common import figure, regime
from tinyld.experiments.dpo_dynamics.claims import FALLERS, claims_table, dpo_change_fmt, judge_dpo, squeeze_summary
from tinyld.experiments.dpo_dynamics.command import outputs, run
from tinyld.experiments.dpo_dynamics.conditions import run_conditions
from tinyld.experiments.dpo_dynamics.config import EXPERIMENTS, DPODynamicsConfig
from tinyld.experiments.dpo_dynamics.dynamics import dynamics_seed, mass_figure, run_dynamics
from tinyld.experiments.dpo_dynamics.extend import (extend_figure, extend_seed, judge_extend, run_extend, win_epochs,
                                                    win_rates)
from tinyld.experiments.dpo_dynamics.on_policy import on_policy_seed, run_on_policy
from tinyld.experiments.dpo_dynamics.stages import (DPOWatch, base, dpo, mass, on_policy_pairs, on_policy_round, peaks,
                                                    probes_for, repetition, sample_answers, sampled_correct, sft,
                                                    sft_steps)

__all__ = ["DPODynamicsConfig", "DPOWatch", "EXPERIMENTS", "FALLERS", "base", "claims_table", "dpo",
           "dpo_change_fmt", "dynamics_seed", "extend_figure", "extend_seed", "figure", "judge_dpo", "judge_extend",
           "mass", "mass_figure", "on_policy_pairs", "on_policy_round", "on_policy_seed", "outputs", "peaks",
           "probes_for", "regime", "repetition", "run", "run_conditions", "run_dynamics", "run_extend",
           "run_on_policy", "sample_answers", "sampled_correct", "sft", "sft_steps", "squeeze_summary", "win_epochs",
           "win_rates"]
