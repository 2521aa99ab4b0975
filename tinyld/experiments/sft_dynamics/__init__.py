"""What SFT does to every other answer (paper §4, Fig. 3), why the model answers question A with B's answer, and
which training example pushed each curve.

``python -m tinyld sft-dynamics`` finetunes the pretrained world model on the training prompts for several epochs,
over ≥ 3 seeds and in both world modes (``hard``: long answers with a free-form tail, the paper's regime;
``easy``: one known fact per answer). Along the way it

1. tracks log π(y|x) of every probe family on the training prompts (D_prob) and held-out prompts (D_probtest)
   with :class:`tinyld.probes.Tracker`;
2. classifies greedy answers after every epoch (:meth:`tinyld.world.World.classify`): correct, wrong value,
   another training question's answer, other;
3. attributes the accumulated change of y_{j≠u}⁺ under x_u to the training examples, in a plain-SGD run where the
   engine's per-example prediction −η·A·K·G_j is exact to first order (:func:`tinyld.dynamics.contributions`);
4. evaluates the paper's claims per seed and writes a claims table, the JSON, the tracker tables and the figures.

``--conditions`` adds the sweep over optimizer, learning rate and pretraining depth (valley depth). Every seed is
kept as it finishes (:class:`tinyld.experiments.kit.RunFolder`): Ctrl-C loses none, and ``--resume`` continues.
``--probes FILE --model M`` runs the same tracking on your own probe JSONL with the GPT-2 BPE (no world: no
answer classification).

The parts: :mod:`.config` (the config), :mod:`.tracking` (one tracked SFT run), :mod:`.attribution`,
:mod:`.claims` (the paper's claims, judged), :mod:`.conditions` (the sweep) and :mod:`.command` (the run).
"""
from tinyld.experiments.common import figure, regime
from tinyld.experiments.kit import claims_table
from tinyld.experiments.sft_dynamics.attribution import attribution
from tinyld.experiments.sft_dynamics.claims import NON_HUMAN, SIMILAR, judge
from tinyld.experiments.sft_dynamics.command import outputs, run
from tinyld.experiments.sft_dynamics.conditions import conditions
from tinyld.experiments.sft_dynamics.config import SFTDynamicsConfig
from tinyld.experiments.sft_dynamics.tracking import setup, sft_run

__all__ = ["NON_HUMAN", "SIMILAR", "SFTDynamicsConfig", "attribution", "claims_table", "conditions", "figure",
           "judge", "outputs", "regime", "run", "setup", "sft_run"]
