"""What RL with verifiable rewards does: ``python -m tinyld rl-dynamics`` runs GRPO and Dr. GRPO on the word-problem
task from its SFT model and tracks fixed correct and incorrect samples, the reference solutions and their rewrites,
y* and the mass split at the incorrect samples' positions, the entropy with its first-order prediction, the halves
of each measured step, pass@k and answer length; the claims are judged per seed by rules fixed in :mod:`.claims`.

The parts: :mod:`.config`, :mod:`.tracking` (one RL run and its measurements), :mod:`.claims`, :mod:`.command`.
"""
from tinyld.experiments.rl_dynamics.claims import judge
from tinyld.experiments.rl_dynamics.command import outputs, run
from tinyld.experiments.rl_dynamics.config import RLDynamicsConfig

__all__ = ["RLDynamicsConfig", "judge", "outputs", "run"]
