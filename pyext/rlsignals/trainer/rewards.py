"""Rewards for ``rlsignals train``: built-in verifiers, or a user's ``module:function``.

A reward is ``fn(completion: str, row: dict) -> float``, ``row`` being the
dataset row (every column). Built-ins read the reference answer from
``row[answer_field]``:

    integer       1 when the completion starts (after spaces and an optional "=")
                  with an integer equal to int(answer): "= -38" states -38
    last_integer  1 when the last integer in the completion (thousands commas
                  dropped) equals int(answer): "so the total is 1,024" states 1024
    math          1 when math-verify (``pip install math-verify``) finds the
                  completion's final answer equal to the answer (LaTeX, fractions,
                  sets, intervals, ...)
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from collections.abc import Callable

Reward = Callable[[str, dict], float]
BUILT_IN = ("integer", "last_integer", "math")

_LEADING = re.compile(r"\s*=?\s*(-?\d+)")
_INTEGER = re.compile(r"-?\d[\d,]*")


def _as_int(answer) -> int | None:
    try:
        return int(str(answer).replace(",", "").strip())
    except ValueError:
        return None


def integer_reward(completion: str, answer) -> float:
    match = _LEADING.match(completion)
    return float(match is not None and int(match.group(1)) == _as_int(answer))


def last_integer_reward(completion: str, answer) -> float:
    found = [m.group(0).replace(",", "") for m in _INTEGER.finditer(completion)]
    return float(bool(found) and _as_int(found[-1]) is not None and _as_int(found[-1]) == _as_int(answer))


def math_reward(completion: str, answer) -> float:
    from math_verify import parse, verify

    gold = parse(str(answer)) or parse(f"${answer}$")
    return float(bool(gold) and verify(gold, parse(completion)))


def _by_field(fn: Callable[[str, object], float], answer_field: str) -> Reward:
    @functools.wraps(fn)
    def reward(completion: str, row: dict) -> float:
        return fn(completion, row[answer_field])
    return reward


def resolve_reward(spec: str, answer_field: str = "answer") -> Reward:
    """The reward named by ``spec``: a built-in name or ``module:function`` (importable).
    Raises ValueError with one line saying what is wrong."""
    if spec in BUILT_IN:
        if spec == "math" and importlib.util.find_spec("math_verify") is None:
            raise ValueError("reward 'math' needs the math-verify package: pip install math-verify")
        fn = {"integer": integer_reward, "last_integer": last_integer_reward, "math": math_reward}[spec]
        return _by_field(fn, answer_field)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward must be one of {BUILT_IN} or 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to see, in one line
        raise ValueError(f"reward {spec!r}: cannot import module {module_name!r} "
                         f"({exc.__class__.__name__}: {exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: module {module_name!r} has no function {attr!r}")
    return fn
