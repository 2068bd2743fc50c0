"""Built-in verifiers of `rlsignals train` and user rewards by module:function."""

from __future__ import annotations

import pytest

from rlsignals.trainer.rewards import resolve_reward


@pytest.mark.parametrize("completion, answer, expected", [
    ("= -38", "-38", 1.0), ("-38<|im_end|>", -38, 1.0), ("= 381", "38", 0.0), ("x = 38", "38", 0.0),
    ("", "0", 0.0), ("= 068", "68", 1.0),
])
def test_integer(completion, answer, expected):
    assert resolve_reward("integer")(completion, {"answer": answer}) == expected


@pytest.mark.parametrize("completion, answer, expected", [
    ("so the total is 1,024", "1024", 1.0), ("3 then 4", "4", 1.0), ("3 then 4", "3", 0.0), ("none", "1", 0.0),
])
def test_last_integer(completion, answer, expected):
    assert resolve_reward("last_integer", "solution")(completion, {"solution": answer}) == expected


def test_math_uses_math_verify():
    pytest.importorskip("math_verify")
    reward = resolve_reward("math")
    assert reward("The answer is $\\frac{1}{2}$.", {"answer": "0.5"}) == 1.0
    assert reward("so \\boxed{3}", {"answer": "3"}) == 1.0
    assert reward("so \\boxed{4}", {"answer": "3"}) == 0.0


def test_user_function():
    reward = resolve_reward("os.path:join")
    assert reward("a", "b") == "a/b"  # the function itself, called as fn(completion, row)
