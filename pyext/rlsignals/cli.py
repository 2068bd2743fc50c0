"""Command line: ``rlsignals doctor | build | demo``."""

from __future__ import annotations

import argparse
import platform
import sys


def _doctor(_: argparse.Namespace) -> int:
    import torch

    from rlsignals import __version__
    from rlsignals._extension import build_dir
    from rlsignals.backends import available_backends, triton_interpreter

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
    from rlsignals._extension import load_extension

    status = load_extension()
    print(f"C++ kernels: {status.cpu_reason}\nCUDA kernels: {status.cuda_reason}")
    return 0 if status.cpu else 1


def _demo(args: argparse.Namespace) -> int:
    from rlsignals.showcase import run_showcase

    run_showcase(args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlsignals", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="which backends are live, and why the others are not").set_defaults(func=_doctor)
    sub.add_parser("build", help="compile the C++ (and CUDA) kernels now").set_defaults(func=_build)
    demo = sub.add_parser("demo", help="the main job: for now a short showcase of the ops")
    demo.add_argument("--out", default="rlsignals-demo", help="folder for the plots and JSON (default: %(default)s)")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
