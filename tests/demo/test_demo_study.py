"""Pooling the claims over seeds: mean, Student t interval, verdict."""

from __future__ import annotations

import pytest

from rlsignals.demo.study import format_study, pool, pool_testbed, readme_rows, run_study


def _seed(value: float) -> dict:
    return {"claims": [{"name": "speed-up", "paper": ">2.5x", "value": value, "low": value - 1, "high": value + 1,
                        "threshold": 2.5, "side": "above", "spec": ".2f"}]}


def test_pool_uses_the_spread_over_seeds():
    rows = pool([_seed(v) for v in (3.0, 3.2, 3.1, 2.9)])
    (row,) = rows
    assert row["value"] == pytest.approx(3.05) and row["per_seed"] == [3.0, 3.2, 3.1, 2.9]
    assert 2.5 < row["low"] < 3.05 < row["high"] and row["verdict"] == "holds"
    assert pool([_seed(v) for v in (1.0, 4.0)])[0]["verdict"] == "cannot tell"
    assert "speed-up" in format_study(rows, 4)


def test_testbed_and_readme_rows():
    def seed(start: float, end: float) -> dict:
        est = {"low": 0.0, "high": 1.0}
        return {"testbed": [{"figure": "greedy accuracy", "start": {"value": start, **est},
                             "end": {"value": end, **est}}], **_seed(3.0)}

    per_seed = [seed(0.3, 0.6), seed(0.32, 0.64), seed(0.31, 0.65)]
    (t,) = pool_testbed(per_seed)
    assert t["start"]["value"] == pytest.approx(0.31) and t["lift"]["value"] == pytest.approx(0.32)
    assert t["lift"]["low"] < 0.32 < t["lift"]["high"] and t["per_seed_end"] == [0.6, 0.64, 0.65]
    rows = readme_rows([t], pool(per_seed), 3, 512)
    assert [set(r) for r in rows] == [{"what", "case", "result", "baseline"}] * 2
    assert rows[0]["what"] == "greedy accuracy, uniform RL" and "+0.320" in rows[0]["result"]
    assert rows[1]["baseline"] == "paper: >2.5x" and "3 seeds" in rows[1]["case"]
    assert "end - start" in format_study(pool(per_seed), 3, [t])
    partly = pool([_seed(3.0), _seed(float("nan")), _seed(3.4)])
    assert partly[0]["undefined"] == 1 and partly[0]["value"] == pytest.approx(3.2)
    assert "undefined on 1 of 3 seeds" in format_study(partly, 3)


def test_one_seed_is_refused(tmp_path):
    with pytest.raises(ValueError, match="seeds must be >= 2"):
        run_study(tmp_path, 1)
