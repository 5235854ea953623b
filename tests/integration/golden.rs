//! Comparisons with real peers through committed golden files (`tests/golden/make_golden.py`).
