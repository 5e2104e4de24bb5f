"""sami_core.evaluate.merge_identical_responses: identical responses score as exact ties."""

from __future__ import annotations

import numpy as np

from sami_core.evaluate import merge_identical_responses
from sami_core.stats import mi_per_query


def test_identical_responses_get_one_column_value_and_chance_accuracy():
    # y_0 == y_2 (the same tokens), scored with 16-bit-sized noise: columns 0 and 2 become their mean
    m = [[-1.0, -3.0, -1.002], [-2.0, -0.5, -1.998], [-4.0, -3.0, -4.002]]
    got = merge_identical_responses(m, [[5, 6], [7], [5, 6]])
    np.testing.assert_allclose(got, [[-1.001, -3.0, -1.001], [-1.999, -0.5, -1.999], [-4.001, -3.0, -4.001]], atol=1e-12)
    assert got[0][0] == got[0][2] and got[2][0] == got[2][2]
    assert m[0][2] == -1.002  # the input is left alone
    # row 0: c_0's maximum is now a tie between y_0 and y_2 (credit 1/2); unmerged, y_0 alone won
    # (and in row 2, y_0 won by noise too): the noise no longer decides
    assert mi_per_query([got])["row_accuracy"][0] == (0.5 + 1 + 0.0) / 3
    assert mi_per_query([m])["row_accuracy"][0] == (1 + 1 + 0.0) / 3


def test_distinct_responses_are_left_as_computed():
    m = [[-1.0, -2.0], [-3.0, -4.0]]
    assert merge_identical_responses(m, [[1, 2], [1, 2, 3]]) == m
    assert merge_identical_responses(m, [[1], [1]]) == [[-1.5, -1.5], [-3.5, -3.5]]
