"""Command line: ``rlsignals doctor | build | demo | showcase | score | train | rank1 | rank1-model |
extrapolate | diff-report``.

Every anticipated failure is one line on stderr, ``rlsignals <command>: error:
what, which file/tensor/flag, what was expected``, with exit status 2 for a bad
flag and 1 otherwise; ``--debug`` (or RLSIGNALS_DEBUG=1) shows the traceback
instead. No command deletes or overwrites what it did not write: an existing
non-empty output is refused unless ``--overwrite``, which replaces only an
output of the same command (recognised by its marker file).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from rlsignals.io.errors import UsageError, UserError

SCORE_COLUMNS = {"index", "intra", "inter", "score", "rank"}
ORDERED_COLUMNS = {"intra", "inter", "score", "rank"}
BACKEND_CHOICES = ("auto", "torch", "cpp", "triton", "cuda")


# ---- flag types: a bad value is a usage error (exit 2) naming the flag ----------------------------------------
def _int_at_least(low: int):
    """A flag type: a whole number >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_nonnegative_int = _int_at_least(0)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _finite_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1, got {text!r}")
    return value


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a valid regular expression ({exc})") from None
    return text


def _auto_or_device(text: str) -> str:
    return text if text == "auto" else _device(text)


def _device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected a torch device such as cpu or cuda:0, got {text!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this torch ({torch.__version__}) sees no CUDA device; use cpu")
    return text


# ---- outputs ----------------------------------------------------------------------------------------------------
def _check_writable(path: Path, flag: str) -> None:
    """The nearest existing folder above ``path`` must be a writable folder."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: cannot be created, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot be written, folder {parent} is not writable")


def _folder_output(out: str, command: str, overwrite: bool, *, resume: bool = False) -> str:
    """``check_output`` of the folder ``--out`` plus a writability check; "new", "resume" or "replace"."""
    from rlsignals.io.atomic import check_output

    path = Path(out)
    _check_writable(path, "--out")
    return check_output(path, command, overwrite=overwrite, resume=resume)


def _table_output(out: str, flag: str, columns: set[str], overwrite: bool) -> Path:
    """A table file output: an existing file is replaced only with --overwrite and only
    when its columns show that `rlsignals score` wrote it."""
    from rlsignals.io.errors import OutputExistsError
    from rlsignals.io.tables import check_table_path, table_columns

    try:
        path = check_table_path(out)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None
    _check_writable(path, flag)
    if path.is_dir():
        raise OutputExistsError(f"{flag} {path}: is a folder, expected a table file path")
    if path.exists():
        if not overwrite:
            raise OutputExistsError(f"{flag} {path}: exists; pass --overwrite to replace the output of an earlier "
                                    "`rlsignals score`, or choose another path")
        if not columns <= table_columns(path):
            raise OutputExistsError(f"{flag} {path}: --overwrite replaces only a table written by `rlsignals score` "
                                    f"(with columns {sorted(columns)}); this file is not one; nothing was changed")
    return path


@contextlib.contextmanager
def _incremental_output(out: str, command: str, overwrite: bool, *, resume: bool = False,
                        resume_incomplete: bool = False) -> Iterator[None]:
    """An output folder written step by step by ``command``: checked and marked before
    the work (marker ``complete: false``), marked complete after it. ``resume``: a
    folder of the same command is continued; ``resume_incomplete``: only one whose run
    did not finish. A failed run leaves only what a resume needs: its folder is removed
    when it is not resumable or holds nothing but the marker."""
    from rlsignals.io.atomic import clean_stale_temps, discard_if_unused, read_marker, remove_output, write_marker

    path = Path(out)
    if resume_incomplete and (read_marker(path) or {}).get("command") == command:
        resume = not read_marker(path).get("complete", True)
    state = _folder_output(out, command, overwrite, resume=resume)
    if state == "replace":
        remove_output(path, command)
    path.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    write_marker(path, command, complete=False)
    try:
        yield
    except BaseException:
        if not (resume or resume_incomplete) and state != "resume":
            remove_output(path, command)
        else:
            discard_if_unused(path)
        raise
    write_marker(path, command, complete=True)


def _doctor(_: argparse.Namespace) -> int:
    import torch

    from rlsignals import __version__
    from rlsignals.ops.backends import available_backends, triton_interpreter
    from rlsignals.ops.extension import build_dir

    try:
        import triton
        triton_version = triton.__version__
    except Exception as exc:  # noqa: BLE001 - report, don't fail
        triton_version = f"not importable ({exc.__class__.__name__})"
    print(f"rlsignals {__version__}  python {platform.python_version()}  torch {torch.__version__}  "
          f"triton {triton_version}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"CUDA device: {gpu}   torch CUDA: {torch.version.cuda or 'none'}   "
          f"TRITON_INTERPRET: {'1' if triton_interpreter() else 'unset'}   CPU threads: {torch.get_num_threads()}")
    print(f"extension cache: {build_dir()}")
    print()
    print(f"{'backend':<8} {'live':<5} why")
    status = available_backends()
    for name, (live, reason) in status.items():
        print(f"{name:<8} {'yes' if live else 'no':<5} {reason}")
    return 0 if status["cpp"][0] or status["cuda"][0] else 1


def _build(_: argparse.Namespace) -> int:
    from rlsignals.ops.extension import load_extension

    status = load_extension()
    print(f"C++ kernels: {status.cpu_reason}\nCUDA kernels: {status.cuda_reason}")
    return 0 if status.cpu else 1


def _demo(args: argparse.Namespace) -> int:
    from rlsignals.demo.run import DemoConfig, run_demo

    config = DemoConfig.quick() if args.quick else DemoConfig()
    with _incremental_output(args.out, "demo", args.overwrite, resume_incomplete=True):
        if args.seeds > 1:
            from rlsignals.demo.study import run_study

            run_study(args.out, args.seeds, config)
        else:
            run_demo(args.out, config)
    return 0


def _showcase(args: argparse.Namespace) -> int:
    from rlsignals.demo.showcase import run_showcase

    with _incremental_output(args.out, "showcase", args.overwrite):
        run_showcase(args.out)
    return 0


def _score(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rlsignals.signals import ScoreConfig, score_dataset
    from rlsignals.signals.scoring import resolve_model_source

    if args.system_prompt is not None and args.system_prompt_file is not None:
        raise UsageError("--system-prompt and --system-prompt-file: give one of them, not both")
    data = Path(args.data).resolve()
    for flag, path in (("--out", args.out), ("--ordered-data", args.ordered_data)):
        if path is not None and Path(path).resolve() == data:
            raise UsageError(f"{flag} {path}: is the --data file itself; choose another output path")
    if args.ordered_data is not None and Path(args.ordered_data).resolve() == Path(args.out).resolve():
        raise UsageError(f"--ordered-data {args.ordered_data}: is the --out file too; choose two paths")
    out = _table_output(args.out, "--out", SCORE_COLUMNS, args.overwrite)
    ordered = _table_output(args.ordered_data, "--ordered-data", ORDERED_COLUMNS, args.overwrite) \
        if args.ordered_data else None
    resolve_model_source(args.model)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # stderr stays one line on an error; scoring has its own bar
    transformers_logging.set_verbosity_error()
    system_prompt = Path(args.system_prompt_file).read_text() if args.system_prompt_file else args.system_prompt
    config = ScoreConfig(module=args.module, inter_weight=args.inter_weight, intra_weight=args.intra_weight,
                         batch_tokens=args.batch_tokens, max_batch_size=args.max_batch_size,
                         prefix_cache=not args.no_prefix_cache,
                         max_length=args.max_length, on_long=args.on_long, prefix_tokens=args.prefix_tokens,
                         suffix_tokens=args.suffix_tokens, padding_side=args.padding_side,
                         exclude_diagonal=args.exclude_diagonal, backend=args.backend)
    rows = score_dataset(args.model, args.data, out, prompt_field=args.prompt_field,
                         system_prompt=system_prompt, few_shot=args.few_shot,
                         use_chat_template=not args.no_chat_template, config=config,
                         ordered_data=ordered, device=args.device, dtype=args.dtype, restart=args.restart)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"scored {len(rows)} prompts -> {args.out}" + (f" (ordered rows: {args.ordered_data})"
                                                             if args.ordered_data else ""))
    return 0


def _add_score_parser(sub, common: argparse.ArgumentParser) -> None:
    score = sub.add_parser("score", parents=[common],
                           help="score every prompt of a dataset with the angle signal (prefill only)")
    score.add_argument("--model", required=True, help="a local transformers causal LM folder, or hub:org/name to "
                       "download one from the Hugging Face Hub")
    score.add_argument("--data", required=True, help=".jsonl/.json/.csv/.parquet with one prompt per row")
    score.add_argument("--out", required=True, help="scores: .jsonl/.json/.csv/.parquet, one row per prompt")
    score.add_argument("--prompt-field", default="prompt")
    score.add_argument("--system-prompt", default=None)
    score.add_argument("--system-prompt-file", default=None)
    score.add_argument("--few-shot", default=None, help=".json/.jsonl of chat messages or question/answer pairs")
    score.add_argument("--no-chat-template", action="store_true", help="render prompts as plain text")
    score.add_argument("--module", default=None, help="hooked module (default: last layer's mlp.up_proj input)")
    score.add_argument("--intra-weight", type=_finite_float, default=1.0)
    score.add_argument("--inter-weight", type=_finite_float, default=1.0, help="the released code used 8")
    score.add_argument("--batch-tokens", type=_positive_int, default=None,
                       help="padded tokens per forward pass (default: 16384 on a GPU; on the CPU about 2M / hidden "
                       "size, measured by bench/score_dataset.py --sweep batch_tokens)")
    score.add_argument("--no-prefix-cache", action="store_true",
                       help="run every prompt whole (default: each shared prefix runs once, then the questions)")
    score.add_argument("--max-batch-size", type=_positive_int, default=64)
    score.add_argument("--max-length", type=_positive_int, default=None, help="default: the model's context")
    score.add_argument("--on-long", choices=["error", "truncate"], default="error")
    score.add_argument("--prefix-tokens", type=_nonnegative_int, default=None, help="explicit shared-prefix length")
    score.add_argument("--suffix-tokens", type=_nonnegative_int, default=None, help="explicit trailing-template length")
    score.add_argument("--padding-side", choices=["right", "left"], default="right")
    score.add_argument("--exclude-diagonal", action="store_true")
    score.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    score.add_argument("--device", type=_auto_or_device, default="auto")
    score.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                       help="auto: bfloat16 on GPU, float32 on CPU")
    score.add_argument("--ordered-data", default=None,
                       help="also write the dataset rows sorted by rank (for verl >= 0.8 with shuffle off)")
    score.add_argument("--restart", action="store_true", help="ignore a partial result from an interrupted run")
    score.add_argument("--overwrite", action="store_true",
                       help="replace --out/--ordered-data files written by an earlier `rlsignals score`")
    score.set_defaults(func=_score)


def _rank1(args: argparse.Namespace) -> int:
    from rlsignals.io.checkpoints import Checkpoint
    from rlsignals.rank1.track import track_rank1

    if args.steps is not None and len(args.steps) != len(args.ckpt):
        raise UsageError(f"--steps: got {len(args.steps)} steps for {len(args.ckpt)} checkpoints (--ckpt); give one "
                         "step per checkpoint")
    if len({str(Path(c).resolve()) for c in args.ckpt}) != len(args.ckpt):
        raise UsageError("--ckpt: a checkpoint is listed twice")
    for path in (args.base, *args.ckpt):  # every folder and header readable before the first SVD
        Checkpoint(path)
    with _incremental_output(args.out, "rank1", args.overwrite, resume=True):
        traj = track_rank1(args.base, args.ckpt, args.out, steps=args.steps, include=args.include,
                           exclude=args.exclude, device=args.device, tol=args.tol, max_iters=args.max_iters,
                           backend=args.backend)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trajectory of {len(traj.modules)} modules over {len(traj.records)} checkpoints -> {args.out}")
        certified, modules = traj.certified_count()
        print(f"{certified} of {modules} modules certified (err_bound <= tol); "
              "the others carry an a-posteriori estimate")
    return 0


def _trajectory_and_base(args: argparse.Namespace):
    """The --traj store (checked whole) and the --base checkpoint (checked against its shapes)."""
    from rlsignals.io.checkpoints import Checkpoint, check_shapes
    from rlsignals.rank1.extrapolate import open_trajectory
    from rlsignals.rank1.trajectory import INDEX

    traj = open_trajectory(args.traj)
    check_shapes(Checkpoint(args.base), traj.shapes, f"the trajectory {Path(args.traj) / INDEX}")
    return traj


def _rank1_model(args: argparse.Namespace) -> int:
    from rlsignals.rank1.track import rank1_model

    _folder_output(args.out, "rank1-model", args.overwrite)
    traj = _trajectory_and_base(args)
    count = len(traj.records)
    if not -count <= args.checkpoint < count:
        raise UsageError(f"--checkpoint {args.checkpoint}: the trajectory {args.traj} holds {count} checkpoints; "
                         f"expected an entry from {-count} to {count - 1}")
    out = rank1_model(args.base, traj, args.out, checkpoint=args.checkpoint, alpha=args.alpha, scale=args.scale)
    print(f"rank-1 model -> {out}")
    return 0


def _extrapolate(args: argparse.Namespace) -> int:
    from rlsignals.rank1.extrapolate import extrapolate, read_accuracy

    needs = {"alpharl": ("--accuracy", "--target-accuracy"), "linear_step": ("--target-step",)}
    for flag in needs.get(args.method, ()):
        if getattr(args, flag[2:].replace("-", "_")) is None:
            raise UsageError(f"--method {args.method} needs {flag}")
    if args.method == "two_point" and args.target_step is None and args.factor is None:
        raise UsageError("--method two_point needs --target-step or --factor")
    _folder_output(args.out, "extrapolate", args.overwrite)
    traj = _trajectory_and_base(args)
    accuracy = read_accuracy(args.accuracy, args.step_field, args.acc_field) if args.accuracy else None
    out = extrapolate(args.base, traj, args.out, method=args.method, accuracy=accuracy,
                      accuracy_path=args.accuracy or "<none>", fit_steps=args.fit_steps,
                      target_accuracy=args.target_accuracy, target_step=args.target_step, factor=args.factor,
                      update=args.update)
    print(f"{args.method} extrapolation -> {out} (what was done: {out / 'extrapolation.json'})")
    return 0


def _diff_report(args: argparse.Namespace) -> int:
    from rlsignals.geometry.report import diff_report

    _folder_output(args.out, "diff-report", args.overwrite)
    report = diff_report(args.before, args.after, args.out, k=args.k, alpha=args.alpha, include=args.include,
                         exclude=args.exclude, device=args.device, max_iters=args.max_iters, backend=args.backend)
    print(f"{len(report['modules'])} modules; bf16 sparsity {report['overall_unchanged_frac']:.4f}; "
          f"report -> {args.out}/index.html")
    return 0


def _add_checkpoint_parsers(sub, common: argparse.ArgumentParser) -> None:
    from rlsignals.io.checkpoints import DEFAULT_EXCLUDE, DEFAULT_INCLUDE

    rank1 = sub.add_parser("rank1", parents=[common],
                           help="rank-1 trajectory of the weight updates over checkpoints (resumable)")
    rank1.add_argument("--base", required=True, help="the checkpoint RL started from (HF folder)")
    rank1.add_argument("--ckpt", required=True, nargs="+", help="checkpoints in training order")
    rank1.add_argument("--out", required=True, help="trajectory store folder (reruns skip finished checkpoints)")
    rank1.add_argument("--steps", type=_nonnegative_int, nargs="+", default=None,
                       help="training step of each checkpoint (default: from trainer_state.json or the folder name)")
    rank1.add_argument("--include", type=_regex, default=DEFAULT_INCLUDE, help="regex of tensor names to track")
    rank1.add_argument("--exclude", type=_regex, default=DEFAULT_EXCLUDE, help="regex of tensor names to leave out")
    rank1.add_argument("--device", type=_device, default="cpu")
    rank1.add_argument("--tol", type=_positive_float, default=1e-4)
    rank1.add_argument("--max-iters", type=_positive_int, default=None)
    rank1.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    rank1.add_argument("--overwrite", action="store_true",
                       help="start over in a store written by an earlier `rlsignals rank1` (default: resume it)")
    rank1.set_defaults(func=_rank1)

    model = sub.add_parser("rank1-model", parents=[common],
                           help="write W0 + alpha * scale * u1 v1^T for every tracked module")
    model.add_argument("--base", required=True)
    model.add_argument("--traj", required=True)
    model.add_argument("--out", required=True)
    model.add_argument("--checkpoint", type=int, default=-1, help="which trajectory entry (default: the last)")
    model.add_argument("--alpha", type=_finite_float, default=1.0)
    model.add_argument("--scale", choices=["frob", "sigma"], default="frob")
    model.add_argument("--overwrite", action="store_true", help="replace an earlier output of rank1-model")
    model.set_defaults(func=_rank1_model)

    extra = sub.add_parser("extrapolate", parents=[common],
                           help="jump ahead: AlphaRL, linear-in-step or two-point extrapolation")
    extra.add_argument("--base", required=True)
    extra.add_argument("--traj", required=True)
    extra.add_argument("--out", required=True)
    extra.add_argument("--method", choices=["alpharl", "linear_step", "two_point"], default="alpharl")
    extra.add_argument("--accuracy", default=None, help=".jsonl/.csv with the accuracy per step")
    extra.add_argument("--step-field", default="step")
    extra.add_argument("--acc-field", default="accuracy")
    extra.add_argument("--fit-steps", type=_nonnegative_int, nargs="+", default=None,
                       help="steps to fit (default: all)")
    extra.add_argument("--target-accuracy", type=_finite_float, default=None)
    extra.add_argument("--target-step", type=_positive_int, default=None)
    extra.add_argument("--factor", type=_finite_float, default=None, help="two_point: W0 + factor * (WT - W0)")
    extra.add_argument("--update", choices=["released", "replace"], default="released")
    extra.add_argument("--overwrite", action="store_true", help="replace an earlier output of extrapolate")
    extra.set_defaults(func=_extrapolate)

    diff = sub.add_parser("diff-report", parents=[common],
                          help="what an update changed: sparsity, principal weights, subspace angles")
    diff.add_argument("--before", required=True)
    diff.add_argument("--after", required=True)
    diff.add_argument("--out", required=True, help="report folder (report.json, PNGs, index.html)")
    diff.add_argument("--k", type=_positive_int, default=64, help="rank of the principal subspaces")
    diff.add_argument("--alpha", type=_fraction, default=0.5, help="fraction of weights counted as principal")
    diff.add_argument("--include", type=_regex, default=DEFAULT_INCLUDE)
    diff.add_argument("--exclude", type=_regex, default=DEFAULT_EXCLUDE)
    diff.add_argument("--device", type=_device, default="cpu")
    diff.add_argument("--max-iters", type=_positive_int, default=None, help="passes per SVD at most (default 64)")
    diff.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    diff.add_argument("--overwrite", action="store_true", help="replace an earlier output of diff-report")
    diff.set_defaults(func=_diff_report)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``<prog>: error: <message> (see <prog> --help)``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error (also: RLSIGNALS_DEBUG=1)")
    parser = _Parser(prog="rlsignals", description=__doc__, parents=[common],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("doctor", parents=[common], help="which backends are live, and why the others are not"
                   ).set_defaults(func=_doctor)
    sub.add_parser("build", parents=[common], help="compile the C++ (and CUDA) kernels now").set_defaults(func=_build)
    demo = sub.add_parser("demo", parents=[common],
                          help="the main job: RL on the embedded model with GAIN-RL vs uniform sampling, "
                               "rank-1 tracking, extrapolation, update geometry, SFT comparison")
    demo.add_argument("--out", default="rlsignals-demo", help="folder for the table, plots and checkpoints "
                                                             "(default: %(default)s; an unfinished run is resumed)")
    demo.add_argument("--quick", action="store_true", help="a reduced size that finishes in a minute or two")
    demo.add_argument("--overwrite", action="store_true", help="replace the output of an earlier finished demo")
    demo.add_argument("--seeds", type=int, default=1,
                      help="run the demo for seeds 0..N-1 (one folder each) and pool every claim with an interval "
                           "over seeds (default: %(default)s)")
    demo.set_defaults(func=_demo)
    showcase = sub.add_parser("showcase", parents=[common],
                              help="a short showcase of the angle ops on synthetic hidden states")
    showcase.add_argument("--out", default="rlsignals-showcase", help="folder for the plot and JSON")
    showcase.add_argument("--overwrite", action="store_true", help="replace the output of an earlier showcase")
    showcase.set_defaults(func=_showcase)
    _add_score_parser(sub, common)
    _add_checkpoint_parsers(sub, common)
    from rlsignals.trainer.command import add_train_parser

    add_train_parser(sub)  # its own --debug (a shared parent's action must not be resolved away)
    return parser


def _describe(exc: BaseException) -> tuple[str, int]:
    """(one-line message, exit status) of an error raised by a command."""
    from safetensors import SafetensorError

    if isinstance(exc, UserError):
        text, code = str(exc), exc.exit_code
    elif isinstance(exc, OSError) and exc.filename is not None:
        text, code = f"{exc.filename}: {exc.strerror or exc}", 1
    elif isinstance(exc, (ValueError, OSError, SafetensorError)):
        text, code = str(exc) or type(exc).__name__, 1
    elif isinstance(exc, ImportError):
        text, code = f"{exc}; install the missing package with pip", 1
    elif isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        text, code = f"out of memory ({type(exc).__name__}); try a smaller batch or another --device", 1
    else:
        text, code = (f"internal error {type(exc).__name__}: {exc} (a bug: rerun with --debug for the traceback "
                      "and report it)"), 1
    return " ".join(text.split()), code


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("RLSIGNALS_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"rlsignals {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error becomes one line unless --debug
        if debug:
            raise
        message, code = _describe(exc)
        print(f"rlsignals {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
