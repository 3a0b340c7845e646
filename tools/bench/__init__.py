"""`make bench`: every tools/bench/bench_*.py module's run() returns metrics; they are printed as
a table and written to build/bench.json as {"<metric>": {"value": n, "unit": "...", "target": "..."}}.
Benchmarks measure; tests assert behaviour. Targets here are what the issues ask for."""
