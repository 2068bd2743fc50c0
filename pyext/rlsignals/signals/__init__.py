"""The prefill angle signal of a dataset (GAIN-RL) and the samplers it drives.

- prompts.py: chat rendering and the exact shared-prefix / question split;
- capture.py: the forward hook that captures a module's activation and stops;
- scoring.py: ``score_dataset`` / ``score_prompts`` (angle_stats per prompt);
- samplers.py: ``GainRLSampler`` and ``UniformSampler``.
"""

from rlsignals.signals.prompts import PromptTemplate, TemplateBounds, load_rows
from rlsignals.signals.samplers import GainRLSampler, UniformSampler
from rlsignals.signals.scoring import ScoreConfig, score_dataset, score_prompts

__all__ = ["GainRLSampler", "PromptTemplate", "ScoreConfig", "TemplateBounds", "UniformSampler", "load_rows",
           "score_dataset", "score_prompts"]
