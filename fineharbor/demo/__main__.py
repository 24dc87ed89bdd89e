"""``python -m fineharbor.demo``: generate the demo sources, optionally serve the URL list."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from fineharbor.demo import generate_demo, serve_directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fineharbor.demo", description=__doc__)
    parser.add_argument("--home", default=os.environ.get("FINEHARBOR_HOME", ".fineharbor"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--serve", action="store_true", help="serve the URL list until Ctrl-C")
    args = parser.parse_args(argv)
    summary = generate_demo(
        Path(args.home), f"http://{args.host}:{args.port}", seed=args.seed, scale=args.scale
    )
    print(f"demo written to {summary.demo_dir} in {summary.seconds:.1f} s")
    for source, n in summary.records.items():
        planted = sum(summary.defects_by_source.get(source, {}).values())
        print(f"  {source:16s} {n:5d} records, {planted:3d} planted defects")
    print(f"  ground truth: {summary.ground_truth_path} ({sum(summary.defects.values())} rows)")
    if args.serve:
        with serve_directory(summary.served_dir, args.host, args.port) as url:
            print(f"serving {summary.served_dir} at {url} (Ctrl-C to stop)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
