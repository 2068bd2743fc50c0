"""The shipped demo model: where it is and how to load it.

``assets/model`` is a Hugging Face folder (config.json, model.safetensors in
fp32, tokenizer.json, tokenizer_config.json, chat_template.jinja,
generation_config.json) plus ``pretrain_info.json``: the settings of the
``python -m rlsignals.demo.pretrain`` run that made it and its measured
held-out accuracy per difficulty. It loads with plain
``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained(default_model_dir())``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any


def default_model_dir() -> Path:
    """The folder of the shipped model (inside the installed package)."""
    path = Path(str(resources.files("rlsignals.demo").joinpath("assets", "model")))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the demo model is missing from {path}: the package was installed without its "
                                "assets; rebuild it with `python -m rlsignals.demo.pretrain --out DIR`")
    return path


def pretrain_info() -> dict[str, Any]:
    """The shipped ``pretrain_info.json``: training settings and measured accuracies."""
    return json.loads((default_model_dir() / "pretrain_info.json").read_text())


def load_default_model(dtype: Any = None, device: Any = None):
    """(model, tokenizer) of the shipped model, the model in eval mode and the
    tokenizer left-padding (what batched ``generate`` needs)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer
