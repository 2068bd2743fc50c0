"""The commands that drive the package itself: doctor, build, demo, showcase."""

from __future__ import annotations

import dataclasses
import platform

from rlsignals.settings import option, whole_number


@dataclasses.dataclass(kw_only=True)
class DoctorSettings:
    """(no settings)"""


def doctor(_: DoctorSettings) -> int:
    """Print the versions and which backends are live (exit 1 when no compiled backend is)."""
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


@dataclasses.dataclass(kw_only=True)
class BuildSettings:
    """(no settings)"""


def build(_: BuildSettings) -> int:
    """Compile (or load the cached) kernels and say what was built."""
    from rlsignals.ops.extension import load_extension

    status = load_extension()
    print(f"C++ kernels: {status.cpu_reason}\nCUDA kernels: {status.cuda_reason}")
    return 0 if status.cpu else 1


@dataclasses.dataclass(kw_only=True)
class DemoSettings:
    out: str = option("rlsignals-demo", "folder for the table, plots and checkpoints (an unfinished run is resumed)")
    quick: bool = option(False, "a reduced size that finishes in a minute or two")
    overwrite: bool = option(False, "replace the output of an earlier finished demo")
    seeds: int = option(1, "run the demo for seeds 0..N-1 (one folder each) and pool every claim with an interval "
                           "over seeds", parse=whole_number(1))
    testbed: str = option("embedded", "embedded: the shipped 1.1M-parameter model on synthetic arithmetic; smollm2: "
                                      "SmolLM2-135M-Instruct on SVAMP's arithmetic (after `rlsignals setup-real`; "
                                      "about an hour)", choices=("embedded", "smollm2"))


def demo(settings: DemoSettings) -> int:
    from rlsignals.demo.run import DemoConfig, run_demo
    from rlsignals.io.outputs import incremental_output

    if settings.testbed == "smollm2":
        config = DemoConfig.real(quick=settings.quick)
    else:
        config = DemoConfig.quick() if settings.quick else DemoConfig()
    with incremental_output(settings.out, "demo", settings.overwrite, resume_incomplete=True):
        if settings.seeds > 1:
            from rlsignals.demo.study import run_study

            run_study(settings.out, settings.seeds, config)
        else:
            run_demo(settings.out, config)
    return 0


@dataclasses.dataclass(kw_only=True)
class ShowcaseSettings:
    out: str = option("rlsignals-showcase", "folder for the plot and JSON")
    overwrite: bool = option(False, "replace the output of an earlier showcase")


def showcase(settings: ShowcaseSettings) -> int:
    from rlsignals.demo.showcase import run_showcase
    from rlsignals.io.outputs import incremental_output

    with incremental_output(settings.out, "showcase", settings.overwrite):
        run_showcase(settings.out)
    return 0
