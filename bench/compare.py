"""Agreement checks: every peer must match rayfs before any time is reported."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayfs.testing import assert_features_equal


class Disagreement(AssertionError):
    pass


def _first_diffs(a: pd.Series, e: pd.Series, rtol: float, limit: int = 5) -> np.ndarray:
    """Row indices where ``a`` and ``e`` differ (vectorised version of assert_features_equal's rule)."""
    an, en = a.isna().to_numpy(), e.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(a.dtype) and pd.api.types.is_numeric_dtype(e.dtype):
        x, y = a.to_numpy(dtype=np.float64), e.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            close = np.abs(x - y) <= np.maximum(rtol * np.maximum(np.abs(x), np.abs(y)), 1e-12)
        ok = (an & en) | (~an & ~en & close)
    else:
        ok = (an & en) | (~an & ~en & (a.to_numpy(dtype=object) == e.to_numpy(dtype=object)))
    return np.flatnonzero(~ok)[:limit]


def check(actual: pd.DataFrame, expected: pd.DataFrame, columns: list[str], context: str,
          obs: pd.DataFrame | None = None, rtol: float = 1e-9) -> None:
    """Raise :class:`Disagreement` printing the first differing rows; else run assert_features_equal."""
    if len(actual) != len(expected):
        raise Disagreement(f"{context}: {len(actual)} rows vs {len(expected)}")
    for c in columns:
        bad = _first_diffs(actual[c].reset_index(drop=True), expected[c].reset_index(drop=True), rtol)
        if len(bad):
            show = pd.DataFrame({"rayfs": actual[c].to_numpy(dtype=object)[bad],
                                 "peer": expected[c].to_numpy(dtype=object)[bad]}, index=bad)
            if obs is not None:
                show = obs.reset_index(drop=True).iloc[bad].join(show)
            msg = (f"DISAGREEMENT {context}: feature {c!r}, {len(bad)}+ rows differ; first rows:\n"
                   f"{show.to_string()}")
            print(msg)
            raise Disagreement(msg)
    # The authoritative check (row by row, NaN == NaN, rtol on floats).
    assert_features_equal(actual.reset_index(drop=True), expected.reset_index(drop=True), columns,
                          rtol=rtol, context=context)
