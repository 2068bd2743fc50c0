"""Loading a causal language model for every command (score, train, pilot, demo).

A model is a local transformers folder (config.json, weights, a tokenizer), or a Hub
model asked for explicitly as ``hub:org/name``: a mistyped path is never sent to the
network. The device rule is one for every command: ``"auto"`` is ``cuda:LOCAL_RANK``
when CUDA is present, else the CPU; dtype ``"auto"`` is bfloat16 on a GPU and float32
on the CPU. torch and transformers are imported when a model is loaded, not before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rlsignals.io.errors import UsageError, UserError

HUB_PREFIX = "hub:"
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.pt", "*.pth")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_model_source(model: str | Path) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether it is a local folder). A local folder
    must hold config.json, weights and a tokenizer; UserError (one line) otherwise."""
    text = str(model)
    if text.startswith(HUB_PREFIX):
        repo = text[len(HUB_PREFIX):]
        if not repo:
            raise UserError(f"model {text!r}: expected a Hub id after {HUB_PREFIX!r}, e.g. hub:Qwen/Qwen2.5-0.5B")
        return repo, False
    path = Path(text).expanduser()
    if not path.is_dir():
        found = "no such folder" if not path.exists() else "a file, not a folder"
        raise UserError(f"model {text!r}: {found}; expected a local transformers model folder (a path that is not "
                        f"a folder is never sent to the Hugging Face Hub; ask for a Hub model explicitly: "
                        f"--model {HUB_PREFIX}org/name)")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; expected a transformers model folder (config.json, weights, "
                        "tokenizer)")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        raise UserError(f"{path}: holds no weights (expected model.safetensors, sharded *.safetensors or "
                        "pytorch_model*.bin)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{path}: holds no tokenizer (expected one of {', '.join(TOKENIZER_FILES)}); save it "
                        "there with tokenizer.save_pretrained")
    return str(path), True


def rank_device() -> str:
    """This process's device: cuda:LOCAL_RANK when CUDA is present, else cpu."""
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """``device`` ("auto" resolved by ``rank_device``), refused with one line (exit 2) when
    it names CUDA and this torch sees none."""
    import torch

    device = rank_device() if device == "auto" else device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r}: this torch ({torch.__version__}) sees no CUDA device; use cpu")
    return device


def torch_dtype(name: str, device: str):
    """The torch dtype for ``name`` ("auto": bfloat16 on CUDA, float32 elsewhere)."""
    import torch

    if name not in DTYPES:
        raise UserError(f"dtype must be one of {DTYPES}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_model(model: Any, tokenizer: Any = None, device: str = "auto", dtype: str = "auto"):
    """(model in eval mode on ``device``, tokenizer). ``model`` is a path or ``hub:org/name``
    (``resolve_model_source``), or a loaded model given with its tokenizer."""
    device = check_device(device)
    if isinstance(model, (str, Path)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source, local = resolve_model_source(model)
        try:
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(source, local_files_only=local)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype(dtype, device),
                                                         local_files_only=local)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{source}: transformers cannot load it as a causal LM: {first}") from exc
    elif tokenizer is None:
        raise ValueError("pass the tokenizer together with a model object")
    return model.to(device).eval(), tokenizer


def quiet_transformers() -> None:
    """No progress bars or warnings from transformers itself (model loading): a command's
    stderr stays its own bar and, on an error, one line."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
