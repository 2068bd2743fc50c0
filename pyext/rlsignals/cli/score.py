"""``rlsignals score``: the angle signal of every prompt of a dataset, at prefill."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from rlsignals.io.errors import UsageError
from rlsignals.io.models import DTYPES
from rlsignals.settings import auto_or_device, option
from rlsignals.signals.config import PromptOptions, ScoreConfig

SCORE_COLUMNS = {"index", "intra", "inter", "score", "rank"}
ORDERED_COLUMNS = {"intra", "inter", "score", "rank"}


@dataclasses.dataclass(kw_only=True)
class ScoreSettings(ScoreConfig, PromptOptions):
    """The scoring options (``ScoreConfig``), the prompts' (``PromptOptions``) and the command's own."""

    model: str = option(help="a local transformers causal LM folder, or hub:org/name for a Hugging Face Hub model")
    data: str = option(help=".jsonl/.json/.csv/.parquet with one prompt per row")
    out: str = option(help="scores: .jsonl/.json/.csv/.parquet, one row per prompt")
    system_prompt_file: str | None = option(None, "a file holding the system prompt (instead of --system-prompt)")
    device: str = option("auto", "auto: cuda:LOCAL_RANK when there is a GPU, else cpu", parse=auto_or_device)
    dtype: str = option("auto", "auto: bfloat16 on a GPU, float32 on the CPU", choices=DTYPES)
    ordered_data: str | None = option(None, "also write the dataset rows sorted by rank (for verl >= 0.8 with "
                                            "shuffle off)")
    restart: bool = option(False, "ignore a partial result from an interrupted run")
    overwrite: bool = option(False, "replace --out/--ordered-data files written by an earlier `rlsignals score`")

    def validate(self) -> None:
        if self.system_prompt is not None and self.system_prompt_file is not None:
            raise UsageError("--system-prompt and --system-prompt-file: give one of them, not both")
        data = Path(self.data).resolve()
        for flag, path in (("--out", self.out), ("--ordered-data", self.ordered_data)):
            if path is not None and Path(path).resolve() == data:
                raise UsageError(f"{flag} {path}: is the --data file itself; choose another output path")
        if self.ordered_data is not None and Path(self.ordered_data).resolve() == Path(self.out).resolve():
            raise UsageError(f"--ordered-data {self.ordered_data}: is the --out file too; choose two paths")


def score(s: ScoreSettings) -> int:
    from rlsignals.io.models import check_device, quiet_transformers, resolve_model_source
    from rlsignals.io.outputs import table_output
    from rlsignals.settings import narrow
    from rlsignals.signals.scoring import score_dataset

    out = table_output(s.out, "--out", SCORE_COLUMNS, s.overwrite)
    ordered = table_output(s.ordered_data, "--ordered-data", ORDERED_COLUMNS, s.overwrite) if s.ordered_data \
        else None
    resolve_model_source(s.model)
    device = check_device(s.device)
    quiet_transformers()
    system_prompt = Path(s.system_prompt_file).read_text() if s.system_prompt_file else s.system_prompt
    rows = score_dataset(s.model, s.data, out, prompt_field=s.prompt_field, system_prompt=system_prompt,
                         few_shot=s.few_shot, use_chat_template=s.use_chat_template, config=narrow(s, ScoreConfig),
                         ordered_data=ordered, device=device, dtype=s.dtype, restart=s.restart)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"scored {len(rows)} prompts -> {s.out}" + (f" (ordered rows: {s.ordered_data})"
                                                          if s.ordered_data else ""))
    return 0
