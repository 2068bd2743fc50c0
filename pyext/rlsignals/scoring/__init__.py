"""Prefill scoring of a dataset with the angle signal (GAIN-RL)."""

from rlsignals.scoring.prompts import PromptTemplate, TemplateBounds, load_rows
from rlsignals.scoring.score import ScoreConfig, score_dataset, score_prompts

__all__ = ["PromptTemplate", "ScoreConfig", "TemplateBounds", "load_rows", "score_dataset", "score_prompts"]
