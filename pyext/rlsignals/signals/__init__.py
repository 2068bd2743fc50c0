"""The prefill angle signal of a dataset (GAIN-RL) and the samplers it drives.

- config.py: the settings of prompt rendering and scoring (imports nothing heavy);
- prompts.py: chat rendering, the exact shared-prefix / question split, fitting to the context;
- reduce.py: unit-row sums of token spans -> intra/inter (scorer and live signal alike);
- batching.py: prompt encoding and batch planning;
- released.py: the released scorer's quantities, for comparison;
- scoring.py: ``score_dataset`` / ``score_prompts`` (each question on the shared prefix, run once);
- samplers.py: ``GainRLSampler`` and ``UniformSampler``.
"""

from rlsignals._lazy import lazy_attributes

_EXPORTS = {"PromptTemplate": "rlsignals.signals.prompts", "TemplateBounds": "rlsignals.signals.prompts",
            "load_rows": "rlsignals.signals.prompts", "GainRLSampler": "rlsignals.signals.samplers",
            "UniformSampler": "rlsignals.signals.samplers", "ScoreConfig": "rlsignals.signals.config",
            "score_dataset": "rlsignals.signals.scoring", "score_prompts": "rlsignals.signals.scoring"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, globals())
