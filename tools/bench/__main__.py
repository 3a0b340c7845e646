"""Run every benchmark (or those named on the command line), print a table, write build/bench.json."""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path

import tools.bench as pkg

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    ap.add_argument("only", nargs="*", help="run only these benchmark modules (e.g. allowlist pn532)")
    ap.add_argument("--out", default=str(ROOT / "build" / "bench.json"))
    args = ap.parse_args(argv)
    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("bench_"))
    if args.only:
        names = [n for n in names if n[len("bench_"):] in args.only]
    results: dict[str, dict] = {}
    failed = []
    for name in names:
        t0 = time.monotonic()
        print(f"bench: {name[6:]} ...", file=sys.stderr, flush=True)
        try:
            mod = importlib.import_module(f"tools.bench.{name}")
            results.update(mod.run())
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"bench: {name[6:]} done in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    w = max([len(k) for k in results] + [6])
    print(f"{'metric':<{w}}  {'value':>14}  {'unit':<12}  target")
    for k in sorted(results):
        m = results[k]
        v = m["value"]
        vs = f"{v:,.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else f"{v:,}"
        print(f"{k:<{w}}  {vs:>14}  {m['unit']:<12}  {m.get('target', '')}")
    print(f"\nwrote {out}")
    if failed:
        print("failed benchmarks: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
