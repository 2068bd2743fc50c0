"""The demo task: a seeded, graded generator and the verifier."""

from __future__ import annotations

import pytest

from rlsignals.demo import task


def test_generator_is_deterministic_and_seed_dependent():
    a = task.generate_dataset(200, seed=7)
    assert a == task.generate_dataset(200, seed=7)
    assert a != task.generate_dataset(200, seed=8)
    assert [r["id"] for r in a] == [f"arith-7-{i}" for i in range(200)]
    assert set(a[0]) >= {"id", "prompt", "answer", "difficulty"}


def test_generator_is_balanced_and_answers_are_right():
    rows = task.generate_dataset(500, seed=0)
    counts = {d: sum(r["difficulty"] == d for r in rows) for d in task.DIFFICULTIES}
    assert set(counts.values()) == {100}
    for r in rows:
        a, op, b = r["prompt"].split(" ")
        assert int(a) == r["a"] and int(b) == r["b"] and op == r["op"]
        assert r["answer"] == str(task.solve(r["a"], r["op"], r["b"]))
        assert (r["op"], len(a), len(b)) in task.LEVELS[r["difficulty"]]
        assert len(task.format_answer(r["answer"])) <= 2 + 5    # "= " + at most 5 characters
    assert any(int(r["answer"]) < 0 for r in rows)


def test_levels_are_graded_by_size():
    rows = task.generate_dataset(1000, seed=1)
    mean_digits = {d: sum(len(r["prompt"]) for r in rows if r["difficulty"] == d) / 200 for d in task.DIFFICULTIES}
    assert list(mean_digits.values()) == sorted(mean_digits.values())


def test_subset_of_levels_and_bad_arguments():
    rows = task.generate_dataset(30, seed=3, difficulties=(2, 5))
    assert {r["difficulty"] for r in rows} == {2, 5}
    assert task.generate_dataset(0, seed=3) == []
    with pytest.raises(ValueError, match="difficulties"):
        task.generate_dataset(3, seed=0, difficulties=(6,))
    with pytest.raises(ValueError, match="n must be"):
        task.generate_dataset(-1, seed=0)


def test_few_shot_prefix():
    msgs = task.messages("12 + 3")
    assert msgs[0] == {"role": "system", "content": task.SYSTEM_PROMPT}
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * len(task.EXAMPLES) + ["user"]
    assert msgs[-1]["content"] == "12 + 3"
    for (problem, answer), user, reply in zip(task.EXAMPLES, msgs[1::2], msgs[2::2]):
        assert user["content"] == problem and task.verify(reply["content"], answer) == 1.0
        a, op, b = problem.split(" ")
        assert task.solve(int(a), op, int(b)) == answer


@pytest.mark.parametrize("completion, answer, expected", [
    ("= 68", "68", 1.0),
    ("= 68", 68, 1.0),
    ("=68", "68", 1.0),
    ("68", "68", 1.0),
    ("  = 68 ", "68", 1.0),
    ("= 68<|im_end|>", "68", 1.0),
    ("= 68\n<|im_start|>user\n1 + 1", "68", 1.0),
    ("= 68 + 1", "68", 1.0),
    ("= 68abc", "68", 1.0),
    ("= -18", "-18", 1.0),
    ("= -18", -18, 1.0),
    ("= 0", "0", 1.0),
    ("= 068", "68", 1.0),
    ("= 18", "-18", 0.0),
    ("= -68", "68", 0.0),
    ("= - 18", "-18", 0.0),
    ("= 681", "68", 0.0),
    ("= 6", "68", 0.0),
    ("= 6 8", "68", 0.0),
    ("", "68", 0.0),
    ("=", "68", 0.0),
    ("x = 68", "68", 0.0),
    ("answer: 68", "68", 0.0),
    ("= sixty-eight", "68", 0.0),
    ("!!!!!!!!", "68", 0.0),
])
def test_verify(completion, answer, expected):
    assert task.verify(completion, answer) == expected


def test_parse_answer():
    assert task.parse_answer("= -899<|im_end|>") == -899
    assert task.parse_answer("junk") is None
