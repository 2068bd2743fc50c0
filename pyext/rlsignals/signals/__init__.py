"""The prefill angle signal of a dataset (GAIN-RL) and the samplers it drives.

- prompts.py: chat rendering and the exact shared-prefix / question split;
- capture.py: the forward hooks that read a module's activation;
- reduce.py: unit-row sums of token spans -> intra/inter (scorer and live signal alike);
- prefix_cache.py: a shared prefix run once (its sums and key/value cache);
- scoring.py: ``score_dataset`` / ``score_prompts`` (each question on the cached prefix);
- samplers.py: ``GainRLSampler`` and ``UniformSampler``.
"""

from rlsignals.signals.prompts import PromptTemplate, TemplateBounds, load_rows
from rlsignals.signals.samplers import GainRLSampler, UniformSampler
from rlsignals.signals.scoring import ScoreConfig, score_dataset, score_prompts

__all__ = ["GainRLSampler", "PromptTemplate", "ScoreConfig", "TemplateBounds", "UniformSampler", "load_rows",
           "score_dataset", "score_prompts"]
