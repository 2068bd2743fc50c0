"""Command line: ``rlsignals doctor | build | demo | showcase | score | rank1 | rank1-model | extrapolate |
diff-report``."""

from __future__ import annotations

import argparse
import os
import platform
import sys


def _doctor(_: argparse.Namespace) -> int:
    import torch

    from rlsignals import __version__
    from rlsignals.ops.extension import build_dir
    from rlsignals.ops.backends import available_backends, triton_interpreter

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

    run_demo(args.out, DemoConfig.quick() if args.quick else DemoConfig())
    return 0


def _showcase(args: argparse.Namespace) -> int:
    from rlsignals.demo.showcase import run_showcase

    run_showcase(args.out)
    return 0


def _score(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rlsignals.signals import ScoreConfig, score_dataset

    system_prompt = Path(args.system_prompt_file).read_text() if args.system_prompt_file else args.system_prompt
    config = ScoreConfig(module=args.module, inter_weight=args.inter_weight, intra_weight=args.intra_weight,
                         batch_tokens=args.batch_tokens, max_batch_size=args.max_batch_size,
                         max_length=args.max_length, on_long=args.on_long, prefix_tokens=args.prefix_tokens,
                         suffix_tokens=args.suffix_tokens, padding_side=args.padding_side,
                         exclude_diagonal=args.exclude_diagonal, backend=args.backend)
    rows = score_dataset(args.model, args.data, args.out, prompt_field=args.prompt_field,
                         system_prompt=system_prompt, few_shot=args.few_shot,
                         use_chat_template=not args.no_chat_template, config=config,
                         ordered_data=args.ordered_data, device=args.device, dtype=args.dtype, restart=args.restart)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"scored {len(rows)} prompts -> {args.out}" + (f" (ordered rows: {args.ordered_data})"
                                                             if args.ordered_data else ""))
    return 0


def _add_score_parser(sub) -> None:
    score = sub.add_parser("score", help="score every prompt of a dataset with the angle signal (prefill only)")
    score.add_argument("--model", required=True, help="a local transformers causal LM folder")
    score.add_argument("--data", required=True, help=".jsonl/.json/.csv/.parquet with one prompt per row")
    score.add_argument("--out", required=True, help="scores: .jsonl/.json/.csv/.parquet, one row per prompt")
    score.add_argument("--prompt-field", default="prompt")
    score.add_argument("--system-prompt", default=None)
    score.add_argument("--system-prompt-file", default=None)
    score.add_argument("--few-shot", default=None, help=".json/.jsonl of chat messages or question/answer pairs")
    score.add_argument("--no-chat-template", action="store_true", help="render prompts as plain text")
    score.add_argument("--module", default=None, help="hooked module (default: last layer's mlp.up_proj input)")
    score.add_argument("--intra-weight", type=float, default=1.0)
    score.add_argument("--inter-weight", type=float, default=1.0, help="the released code used 8")
    score.add_argument("--batch-tokens", type=int, default=16384, help="padded tokens per forward pass")
    score.add_argument("--max-batch-size", type=int, default=64)
    score.add_argument("--max-length", type=int, default=None, help="default: the model's context")
    score.add_argument("--on-long", choices=["error", "truncate"], default="error")
    score.add_argument("--prefix-tokens", type=int, default=None, help="explicit shared-prefix length")
    score.add_argument("--suffix-tokens", type=int, default=None, help="explicit trailing-template length")
    score.add_argument("--padding-side", choices=["right", "left"], default="right")
    score.add_argument("--exclude-diagonal", action="store_true")
    score.add_argument("--backend", default="auto")
    score.add_argument("--device", default="auto")
    score.add_argument("--dtype", default="auto", help="auto: bfloat16 on GPU, float32 on CPU")
    score.add_argument("--ordered-data", default=None,
                       help="also write the dataset rows sorted by rank (for verl >= 0.8 with shuffle off)")
    score.add_argument("--restart", action="store_true", help="ignore a partial result from an interrupted run")
    score.set_defaults(func=_score)


def _rank1(args: argparse.Namespace) -> int:
    from rlsignals.rank1.track import track_rank1

    traj = track_rank1(args.base, args.ckpt, args.out, steps=args.steps, include=args.include, exclude=args.exclude,
                       device=args.device, tol=args.tol, max_iters=args.max_iters, backend=args.backend)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trajectory of {len(traj.modules)} modules over {len(traj.records)} checkpoints -> {args.out}")
    return 0


def _rank1_model(args: argparse.Namespace) -> int:
    from rlsignals.rank1.track import rank1_model
    from rlsignals.rank1.trajectory import Trajectory

    out = rank1_model(args.base, Trajectory.open(args.traj), args.out, checkpoint=args.checkpoint, alpha=args.alpha,
                      scale=args.scale)
    print(f"rank-1 model -> {out}")
    return 0


def _extrapolate(args: argparse.Namespace) -> int:
    from rlsignals.rank1.extrapolate import extrapolate, read_accuracy
    from rlsignals.rank1.trajectory import Trajectory

    accuracy = read_accuracy(args.accuracy, args.step_field, args.acc_field) if args.accuracy else None
    out = extrapolate(args.base, Trajectory.open(args.traj), args.out, method=args.method, accuracy=accuracy,
                      accuracy_path=args.accuracy or "<none>", fit_steps=args.fit_steps,
                      target_accuracy=args.target_accuracy, target_step=args.target_step, factor=args.factor,
                      update=args.update)
    print(f"{args.method} extrapolation -> {out} (what was done: {out / 'extrapolation.json'})")
    return 0


def _diff_report(args: argparse.Namespace) -> int:
    from rlsignals.geometry.report import diff_report

    report = diff_report(args.before, args.after, args.out, k=args.k, alpha=args.alpha, include=args.include,
                         exclude=args.exclude, device=args.device, max_iters=args.max_iters, backend=args.backend)
    print(f"{len(report['modules'])} modules; bf16 sparsity {report['overall_unchanged_frac']:.4f}; "
          f"report -> {args.out}/index.html")
    return 0


def _add_checkpoint_parsers(sub) -> None:
    from rlsignals.io.checkpoints import DEFAULT_EXCLUDE, DEFAULT_INCLUDE

    rank1 = sub.add_parser("rank1", help="rank-1 trajectory of the weight updates over checkpoints (resumable)")
    rank1.add_argument("--base", required=True, help="the checkpoint RL started from (HF folder)")
    rank1.add_argument("--ckpt", required=True, nargs="+", help="checkpoints in training order")
    rank1.add_argument("--out", required=True, help="trajectory store folder (reruns skip finished checkpoints)")
    rank1.add_argument("--steps", type=int, nargs="+", default=None,
                       help="training step of each checkpoint (default: from trainer_state.json or the folder name)")
    rank1.add_argument("--include", default=DEFAULT_INCLUDE, help="regex of tensor names to track")
    rank1.add_argument("--exclude", default=DEFAULT_EXCLUDE, help="regex of tensor names to leave out")
    rank1.add_argument("--device", default="cpu")
    rank1.add_argument("--tol", type=float, default=1e-4)
    rank1.add_argument("--max-iters", type=int, default=None)
    rank1.add_argument("--backend", default="auto")
    rank1.set_defaults(func=_rank1)

    model = sub.add_parser("rank1-model", help="write W0 + alpha * scale * u1 v1^T for every tracked module")
    model.add_argument("--base", required=True)
    model.add_argument("--traj", required=True)
    model.add_argument("--out", required=True)
    model.add_argument("--checkpoint", type=int, default=-1, help="which trajectory entry (default: the last)")
    model.add_argument("--alpha", type=float, default=1.0)
    model.add_argument("--scale", choices=["frob", "sigma"], default="frob")
    model.set_defaults(func=_rank1_model)

    extra = sub.add_parser("extrapolate", help="jump ahead: AlphaRL, linear-in-step or two-point extrapolation")
    extra.add_argument("--base", required=True)
    extra.add_argument("--traj", required=True)
    extra.add_argument("--out", required=True)
    extra.add_argument("--method", choices=["alpharl", "linear_step", "two_point"], default="alpharl")
    extra.add_argument("--accuracy", default=None, help=".jsonl/.csv with the accuracy per step")
    extra.add_argument("--step-field", default="step")
    extra.add_argument("--acc-field", default="accuracy")
    extra.add_argument("--fit-steps", type=int, nargs="+", default=None, help="steps to fit (default: all)")
    extra.add_argument("--target-accuracy", type=float, default=None)
    extra.add_argument("--target-step", type=int, default=None)
    extra.add_argument("--factor", type=float, default=None, help="two_point: W0 + factor * (WT - W0)")
    extra.add_argument("--update", choices=["released", "replace"], default="released")
    extra.set_defaults(func=_extrapolate)

    diff = sub.add_parser("diff-report", help="what an update changed: sparsity, principal weights, subspace angles")
    diff.add_argument("--before", required=True)
    diff.add_argument("--after", required=True)
    diff.add_argument("--out", required=True, help="report folder (report.json, PNGs, index.html)")
    diff.add_argument("--k", type=int, default=64, help="rank of the principal subspaces")
    diff.add_argument("--alpha", type=float, default=0.5, help="fraction of weights counted as principal")
    diff.add_argument("--include", default=DEFAULT_INCLUDE)
    diff.add_argument("--exclude", default=DEFAULT_EXCLUDE)
    diff.add_argument("--device", default="cpu")
    diff.add_argument("--max-iters", type=int, default=None, help="passes per SVD at most (default 64)")
    diff.add_argument("--backend", default="auto")
    diff.set_defaults(func=_diff_report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlsignals", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="which backends are live, and why the others are not").set_defaults(func=_doctor)
    sub.add_parser("build", help="compile the C++ (and CUDA) kernels now").set_defaults(func=_build)
    demo = sub.add_parser("demo", help="the main job: RL on the embedded model with GAIN-RL vs uniform sampling, "
                                       "rank-1 tracking, extrapolation, update geometry, SFT comparison")
    demo.add_argument("--out", default="rlsignals-demo", help="folder for the table, plots and checkpoints "
                                                             "(default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="a reduced size that finishes in a minute or two")
    demo.set_defaults(func=_demo)
    showcase = sub.add_parser("showcase", help="a short showcase of the angle ops on synthetic hidden states")
    showcase.add_argument("--out", default="rlsignals-showcase", help="folder for the plot and JSON")
    showcase.set_defaults(func=_showcase)
    _add_score_parser(sub)
    _add_checkpoint_parsers(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
