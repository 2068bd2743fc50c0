"""The demo task: integer arithmetic of graded difficulty, a few-shot chat
prefix, and a verifier.

A problem is one line, ``"{a} {op} {b}"`` with op in ``+ - *`` (e.g.
``"47 - 85"``); its answer is the exact integer result, possibly negative. The
model is asked to reply ``"= {answer}"`` (e.g. ``"= -38"``) and then end its
turn. Difficulty levels 1-5, each an even mix of the families listed:

    level  families (op, digits of a, digits of b)      example
    1      (+,1,1) (-,1,1)                              7 - 9 = -2
    2      (+,2,1) (*,1,1)                              64 + 8 = 72
    3      (-,2,1) (+,2,2)                              35 + 71 = 106
    4      (-,2,2) (*,2,1)                              17 * 6 = 102
    5      (+,3,3) (-,3,3) (*,2,2)                      482 - 517 = -35

A 1-digit operand is 0-9; an n-digit one (n > 1) has no leading zero.
``generate_dataset(n, seed)`` is deterministic for a seed (Python's
``random.Random``, independent of any global state) and balanced over levels.

How the shipped model was built (two stages of ``python -m
rlsignals.demo.pretrain``; settings of both in its pretrain_info.json, the
first under "init"):

1. 1000 steps on right answers, a third of them restating the problem first
   (``echo_reply``: ``"47 + 21 = 68"``, a format habit ``verify`` does not
   credit);
2. 350 more steps from there with no restating, where each trained reply
   states ``slip_answer`` (the right answer + 10, a carry slip in the tens
   digit) with a probability that grows with the level: 0.55, 0.60, 0.65,
   0.70, 0.75 for levels 1-5 (``--slip-rates``), harder levels drawn more often.

The slip is then the greedy answer on a real share of the problems the model
can solve (about 20 of 64 held-out problems; right 22, other 22), while
sampling still gives the right answer often: the capability is there but
unreliable, which RL can fix by moving probability at one token (the first
digit where the slip and the answer differ). Levels differ in how often the
slip wins and how often the model computes the answer at all, so the order of
training data can matter.

The prompt a model sees is the ChatML rendering of ``messages(prompt)``: the
system prompt, the few-shot turns ``FEW_SHOT`` (three worked examples, one per
operation), then the problem as the last user turn, with the generation
prompt. The shared part (``SYSTEM_PROMPT`` + ``FEW_SHOT``) is the "prefix" of
the angle signal; the problem line is the "question".
"""

from __future__ import annotations

import random
import re
from typing import Any

SYSTEM_PROMPT = "Answer with = and the result."
OPS = ("+", "-", "*")
LEVELS = {
    1: (("+", 1, 1), ("-", 1, 1)),
    2: (("+", 2, 1), ("*", 1, 1)),
    3: (("-", 2, 1), ("+", 2, 2)),
    4: (("-", 2, 2), ("*", 2, 1)),
    5: (("+", 3, 3), ("-", 3, 3), ("*", 2, 2)),
}
DIFFICULTIES = tuple(LEVELS)
# Worked examples of the few-shot prefix: (problem, answer).
EXAMPLES = (("7 + 5", 12), ("34 - 52", -18), ("13 * 6", 78))
# Longest reply: "= " and 5 characters ("= 1998", "= 9801", "= -899"), then
# <|im_end|>: 7 tokens with the character tokenizer. 8 leaves one spare.
MAX_NEW_TOKENS = 8


def format_answer(answer: int | str) -> str:
    """The reply the model is asked to give: ``"= 68"``, ``"= -18"``."""
    return f"= {int(answer)}"


def slip_answer(answer: int | str) -> int:
    """The systematic mistake the shipped model was pre-trained with (a carry
    slip in the tens digit): the right answer plus 10, ``"47 + 21"`` -> 78.
    On harder levels it is the *more* likely reply (see pretrain.py
    ``--slip-rates``), so greedy decoding gives it while sampling still gives
    the right answer often: the headroom RL has to close."""
    return int(answer) + 10


def echo_reply(prompt: str, answer: int | str) -> str:
    """The habit the shipped model was pre-trained with on part of its replies:
    restating the problem first, ``"47 + 21 = 68"``. ``verify`` does not credit
    it (the reply must start with the answer), and with ``MAX_NEW_TOKENS`` it is
    usually cut short; RL can unlearn it, since the choice is made at the
    reply's first token."""
    return f"{prompt} {format_answer(answer)}"


FEW_SHOT: list[dict[str, str]] = [
    turn for problem, answer in EXAMPLES
    for turn in ({"role": "user", "content": problem}, {"role": "assistant", "content": format_answer(answer)})
]


def messages(prompt: str, *, system_prompt: str | None = SYSTEM_PROMPT,
             few_shot: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """Chat messages for one problem: system prompt, few-shot turns, the problem."""
    out = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return out + list(FEW_SHOT if few_shot is None else few_shot) + [{"role": "user", "content": prompt}]


def solve(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def make_problem(rng: random.Random, difficulty: int) -> dict[str, Any]:
    """One problem of the given level: prompt, answer (str), difficulty, op, a, b."""
    if difficulty not in LEVELS:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    op, da, db = rng.choice(LEVELS[difficulty])
    a, b = _operand(rng, da), _operand(rng, db)
    return {"prompt": f"{a} {op} {b}", "answer": str(solve(a, op, b)), "difficulty": difficulty,
            "op": op, "a": a, "b": b}


def generate_dataset(n: int, seed: int, difficulties: tuple[int, ...] = DIFFICULTIES) -> list[dict[str, Any]]:
    """``n`` rows, balanced over ``difficulties`` (levels cycle, then are
    shuffled), each ``{"id", "prompt", "answer", "difficulty", "op", "a", "b"}``.
    The same (n, seed, difficulties) always gives the same rows; ids are
    ``"arith-{seed}-{i}"``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not difficulties or any(d not in LEVELS for d in difficulties):
        raise ValueError(f"difficulties must be a non-empty subset of {DIFFICULTIES}, got {difficulties!r}")
    rng = random.Random(seed)
    levels = [difficulties[i % len(difficulties)] for i in range(n)]
    rng.shuffle(levels)
    return [{"id": f"arith-{seed}-{i}", **make_problem(rng, level)} for i, level in enumerate(levels)]


# The reply's answer: optional spaces, optional "=", optional spaces, then an
# integer with an optional minus sign, not followed by another digit.
_REPLY = re.compile(r"\s*=?\s*(-?\d+)")


def parse_answer(completion: str) -> int | None:
    """The integer a reply states, or None when it states none (see ``verify``)."""
    match = _REPLY.match(completion)
    return int(match.group(1)) if match else None


def verify(completion: str, answer: int | str) -> float:
    """1.0 when ``completion`` states ``answer``, else 0.0.

    What counts: after optional leading whitespace and an optional ``=``
    (itself optionally followed by whitespace), the completion must start with
    an integer (``-?[0-9]+``, read in full: ``"= 681"`` does not state 68)
    whose value equals ``int(answer)``. Anything after that integer is
    ignored, so ``"= 68<|im_end|>"``, ``"= 68\\nfoo"`` and ``"= 68 + 1"`` all
    count. Not counted: an empty reply, a reply starting with anything else
    (``"x = 68"``, ``"answer: 68"``, ``"= - 68"``), a number that is not the
    first thing stated. Leading zeros are read as the integer
    (``"= 068"`` states 68).
    """
    stated = parse_answer(completion)
    return 1.0 if stated is not None and stated == int(answer) else 0.0
