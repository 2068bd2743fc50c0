"""Pooling the claims over seeds: mean, Student t interval, verdict."""

from __future__ import annotations

import pytest

from rlsignals.demo.study import format_study, pool, run_study


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


def test_one_seed_is_refused(tmp_path):
    with pytest.raises(ValueError, match="seeds must be >= 2"):
        run_study(tmp_path, 1)
