"""A small RL trainer for verifiable rewards over a transformers causal LM."""
