"""Reading and writing what the pipeline consumes and produces: HF checkpoints
(safetensors), prompt and score tables, whole-or-nothing outputs, and the
torch.distributed helpers for work split across ranks. Imports nothing of
rlsignals above it."""
