#!/usr/bin/env python3
"""Ratio table: radserve's forward throughput (criterion bench `model_forward`) vs PyTorch's.

Reads the PyTorch peer's JSON (`forward_throughput.py --json OUT`) and criterion's results of
`cargo bench --profile dev -p radserve-benches --bench model_forward`, i.e.
CRITERION/<arch>/<device>/<batch>/new/{benchmark.json,estimates.json}, and prints one row per
arch × batch × device: radserve images/s (from criterion's median time per forward), PyTorch
CPU images/s (median, same batch), and the ratio radserve / PyTorch. The wgpu rows are compared
with PyTorch on the CPU too (there is no PyTorch GPU peer here). "gain" is each side's images/s
at that batch over its own images/s at batch 1 (same arch and device, when batch 1 was run): the
most a dynamic batcher can add to a pipeline bound by that device.

    python3 benches/pytorch/compare.py --pytorch /tmp/pytorch_forward.json [--since EPOCH] [--markdown]

CRITERION defaults to $CRITERION_HOME, else $CARGO_TARGET_DIR/criterion, else target/criterion.
--since EPOCH leaves out criterion results written before that time (results of an earlier
run of a case this run did not measure); benches/model_compare.sh passes its start time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ARCHS = ("resnet18", "resnet34", "densenet121", "unet", "densenet-demo", "unet-demo")
DEVICES = ("cpu", "wgpu")


def criterion_dir() -> Path:
    if os.environ.get("CRITERION_HOME"):
        return Path(os.environ["CRITERION_HOME"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "criterion"
    return Path("target/criterion")


def read_criterion(root: Path, since: float | None) -> dict[tuple[str, str, int], dict]:
    """(arch, device, batch) → {images_per_s, median_ms, low, high} from criterion's median."""
    out = {}
    for arch in ARCHS:
        for device in DEVICES:
            base = root / arch / device
            if not base.is_dir():
                continue
            for case in base.iterdir():
                estimates = case / "new" / "estimates.json"
                bench = case / "new" / "benchmark.json"
                if not (estimates.is_file() and bench.is_file()):
                    continue
                if since is not None and estimates.stat().st_mtime < since:
                    continue
                meta = json.loads(bench.read_text())
                batch = int(meta.get("value_str") or case.name)
                median = json.loads(estimates.read_text())["median"]
                ns = median["point_estimate"]
                ci = median["confidence_interval"]
                out[(arch, device, batch)] = {
                    "images_per_s": batch / (ns * 1e-9),
                    "median_ms": ns * 1e-6,
                    # images/s at the ends of criterion's 95 % interval of the median
                    "images_per_s_low": batch / (ci["upper_bound"] * 1e-9),
                    "images_per_s_high": batch / (ci["lower_bound"] * 1e-9),
                }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pytorch", required=True, metavar="JSON", help="forward_throughput.py --json output")
    ap.add_argument("--criterion", type=Path, default=None, help="criterion's output directory")
    ap.add_argument("--since", type=float, default=None, metavar="EPOCH",
                    help="ignore criterion results older than this (seconds since the epoch)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    args = ap.parse_args()

    root = args.criterion or criterion_dir()
    rust = read_criterion(root, args.since)
    torch_rows = {(r["arch"], int(r["batch"])): r for r in json.loads(Path(args.pytorch).read_text())}
    if not rust:
        print(f"no model_forward results under {root}" + (" since --since" if args.since else ""),
              file=sys.stderr)
        return 1

    def batch_gain(images_per_s, batch_one):
        return images_per_s / batch_one if batch_one else None

    rows = []
    order = {a: i for i, a in enumerate(ARCHS)}
    for (arch, device, batch) in sorted(rust, key=lambda k: (order[k[0]], k[2], DEVICES.index(k[1]))):
        r = rust[(arch, device, batch)]
        t = torch_rows.get((arch, batch))
        r1 = rust.get((arch, device, 1))
        t1 = torch_rows.get((arch, 1))
        rows.append({
            "arch": arch,
            "batch": batch,
            "device": device,
            "radserve_images_per_s": r["images_per_s"],
            "radserve_ms": r["median_ms"],
            "radserve_images_per_s_ci95": [r["images_per_s_low"], r["images_per_s_high"]],
            "pytorch_cpu_images_per_s": t["images_per_s"] if t else None,
            "pytorch_ms": t["median_ms"] if t else None,
            "ratio": r["images_per_s"] / t["images_per_s"] if t else None,
            "radserve_batch_gain": batch_gain(r["images_per_s"], r1 and r1["images_per_s"]),
            "pytorch_batch_gain": batch_gain(t["images_per_s"], t1 and t1["images_per_s"]) if t else None,
        })

    def fmt(v, spec):
        return "—" if v is None else format(v, spec)

    if args.markdown:
        print("| arch | batch | radserve device | radserve images/s | ms/batch | gain | "
              "PyTorch CPU images/s | ms/batch | gain | ratio |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for x in rows:
            print(f"| {x['arch']} | {x['batch']} | {x['device']} | {x['radserve_images_per_s']:.2f} "
                  f"| {x['radserve_ms']:.0f} | {fmt(x['radserve_batch_gain'], '.2f')}× "
                  f"| {fmt(x['pytorch_cpu_images_per_s'], '.2f')} "
                  f"| {fmt(x['pytorch_ms'], '.0f')} | {fmt(x['pytorch_batch_gain'], '.2f')}× "
                  f"| {fmt(x['ratio'], '.2f')}× |")
    else:
        header = (f"{'arch':<14} {'batch':>5} {'device':<6} {'radserve img/s':>14} {'ms':>8} {'gain':>6} "
                  f"{'PyTorch CPU img/s':>17} {'ms':>8} {'gain':>6} {'ratio':>7}")
        print(header)
        print("-" * len(header))
        for x in rows:
            print(f"{x['arch']:<14} {x['batch']:>5} {x['device']:<6} {x['radserve_images_per_s']:>14.2f} "
                  f"{x['radserve_ms']:>8.0f} {fmt(x['radserve_batch_gain'], '.2f'):>5}× "
                  f"{fmt(x['pytorch_cpu_images_per_s'], '.2f'):>17} "
                  f"{fmt(x['pytorch_ms'], '.0f'):>8} {fmt(x['pytorch_batch_gain'], '.2f'):>5}× "
                  f"{fmt(x['ratio'], '.2f'):>6}×")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
