"""Benchmarks: they print figures; they are not tests (see issue 7 and docs/performance.md)."""
