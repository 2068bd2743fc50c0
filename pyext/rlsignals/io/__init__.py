"""Reading and writing what the pipeline consumes and produces: HF checkpoints
(safetensors), models, prompt and score tables, whole-or-nothing outputs and the rule
for what a command may write, and the torch.distributed helpers for work split across
ranks. Imports nothing of rlsignals above it.

``DEFAULT_INCLUDE`` / ``DEFAULT_EXCLUDE``: the tensors the checkpoint analyses cover by
default (every 2-D weight of the decoder layers; embeddings, lm_head and norms out),
here so that commands can show them without importing torch."""

DEFAULT_INCLUDE = r"\.layers\.\d+\..*\.weight$"
DEFAULT_EXCLUDE = r"(embed|lm_head|norm)"
