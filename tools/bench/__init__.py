"""`make bench`: every tools/bench/bench_*.py module's run() returns metrics; they are printed as
a table and written to build/bench.json as {"<metric>": {"value": n, "unit": "...", "target": "..."}}.
Benchmarks measure; tests assert behaviour. Targets here are what the issues ask for."""


def metric(value, unit: str, target: str = "") -> dict:
    """One bench.json entry."""
    return {"value": value, "unit": unit, "target": target}
