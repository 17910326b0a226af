"""The chain analysis gives the same answers as the code before its speed work.

tests/data/chain_analysis_golden.json.gz holds `analyze_chain`'s outputs (every slice's SVI
parameters, ATM and 25-delta vols, butterfly checks, forwards and discounts, term structure,
calendar issues, mispriced quotes, dealer GEX, zero-gamma level, max pain) on the fixed chains of
tests/chain_analysis_cases.py, written by tests/make_chain_analysis_golden.py with the code of
commit ff31ceb. Every number must match to 1e-9 relative (the fixture keeps 13 significant
digits), every decision (which expiries were fitted, with which message, butterfly flags, the
mispriced rows and their order) exactly: those results drive backtest decisions.
"""
from __future__ import annotations

import gzip
import json
import math

import pytest

from tests.chain_analysis_cases import CBOE_FILES, SHARED_DATA, all_chains
from tests.make_chain_analysis_golden import GOLDEN, analysis_record

REL_TOL = 1e-9
ABS_TOL = 1e-12

pytestmark = pytest.mark.skipif(not all((SHARED_DATA / "cboe" / f).is_file() for f in CBOE_FILES),
                                reason="../shared/data/cboe quote tables not present")


def _differences(expected, actual, path="") -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or expected.keys() != actual.keys():
            return [f"{path}: keys {sorted(expected)} != {sorted(actual) if isinstance(actual, dict) else actual!r}"]
        return [d for key in expected for d in _differences(expected[key], actual[key], f"{path}.{key}")]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(expected) != len(actual):
            return [f"{path}: {len(expected)} items, got {actual!r:.200}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in _differences(e, a, f"{path}[{i}]")]
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        if math.isclose(expected, actual, rel_tol=REL_TOL, abs_tol=ABS_TOL):
            return []
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    if type(expected) is not type(actual) or expected != actual:
        return [f"{path}: expected {expected!r}, got {actual!r}"]
    return []


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(gzip.decompress(GOLDEN.read_bytes()))


@pytest.fixture(scope="module")
def chains() -> dict:
    return dict(all_chains())


def test_every_golden_chain_is_rebuilt(golden, chains):
    assert sorted(golden) == sorted(chains)


def test_analysis_matches_the_golden_outputs(golden, chains):
    failures = {}
    for name, chain in chains.items():
        # Through the generator's own rounding, so both sides hold 13 significant digits.
        found = _differences(golden[name], json.loads(json.dumps(analysis_record(chain))))
        if found:
            failures[name] = found[:5] + ([f"... {len(found) - 5} more"] if len(found) > 5 else [])
    assert not failures, json.dumps(failures, indent=1)


def test_the_comparison_catches_a_moved_smile(golden, chains):
    """A fitted vol off by one part in 1e8 is a failure (guards the tolerance above)."""
    name = "cboe:spx_quotedata_2022-02-04.csv"
    record = json.loads(json.dumps(analysis_record(chains[name])))
    fitted = next(s for s in record["slices"] if s["fitted"])
    fitted["atm_vol"] *= 1.0 + 1e-8
    assert any(".atm_vol" in d for d in _differences(golden[name], record))
