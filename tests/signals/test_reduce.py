"""The shared reduce: span sums (overlapping, unordered spans) and the angle
statistics from sums, against angle_stats and an fp64 brute force."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlsignals.ops.angle import angle_stats
from rlsignals.signals.reduce import SpanSums, add_sums, angle_stats_from_sums, span_unit_sums


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_span_sums_of_overlapping_spans_equal_brute_force(backend):
    hidden = torch.randn(40, 17)
    hidden[5] = 0  # a zero row: u = 0, still counted
    starts, ends = torch.tensor([3, 0, 10, 7, 40, 0]), torch.tensor([20, 5, 10, 33, 40, 40])
    got = span_unit_sums(hidden, starts, ends, backend)
    unit = F.normalize(hidden.double(), dim=1)
    for k, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        torch.testing.assert_close(got.sums[k].double(), unit[s:e].sum(0), atol=1e-5, rtol=0)
        assert got.sqsums[k].item() == pytest.approx(unit[s:e].square().sum().item(), abs=1e-5)
        assert got.counts[k].item() == e - s


def test_stats_from_parts_equal_angle_stats():
    hidden = torch.randn(50, 9)
    cu, prefix = torch.tensor([0, 20, 50]), torch.tensor([8, 12])
    expected = angle_stats(hidden, cu, prefix, exclude_diagonal=True, backend="torch")
    # prefix of each sequence read in two parts, question in one
    head = span_unit_sums(hidden, torch.tensor([0, 20]), torch.tensor([3, 25]))
    tail = span_unit_sums(hidden, torch.tensor([3, 25]), torch.tensor([8, 32]))
    question = span_unit_sums(hidden, torch.tensor([8, 32]), torch.tensor([20, 50]))
    got = angle_stats_from_sums(add_sums(head, tail), question, exclude_diagonal=True)
    torch.testing.assert_close(got.intra, expected.intra, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.inter, expected.inter, atol=1e-6, rtol=0)
    empty = SpanSums(torch.zeros(1, 9), torch.zeros(1), torch.zeros(1, dtype=torch.int64))
    assert torch.isnan(angle_stats_from_sums(empty, question).inter).all()


def test_bad_spans_are_refused():
    with pytest.raises(ValueError, match="0 <= start <= end <= 4"):
        span_unit_sums(torch.randn(4, 3), torch.tensor([2]), torch.tensor([5]))
    with pytest.raises(ValueError, match="1-D of one length"):
        span_unit_sums(torch.randn(4, 3), torch.tensor([0, 1]), torch.tensor([2]))
