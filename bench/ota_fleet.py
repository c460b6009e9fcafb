"""Ship it safely, measured: a fleet of device clients on loopback against the real server.

Prints the outcome of every phase (good release to 100%, regression halted at the canary stage
and rolled back, server SIGKILLed mid-rollout and resumed, interrupted downloads resumed,
tampered bundle refused by every device, wrong credentials refused, every device left on a
verified working model) and the delta size against the full bundle for a retrained classifier
and for a full requantization.

    python bench/ota_fleet.py [--devices 200] [--workdir DIR] [--db postgresql://...]
                              [--assets DEMO_DIR] [--json OUT]

Uses the demo MNIST CNN (edgetune/assets/demo) when it is there, else a tiny MLP built in code.
Exits 1 if any phase failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.bundle.ota.health import ProbeData
from edgetune.bundle.ota.simmodels import make_releases, measure_deltas, predictions
from edgetune.bundle.ota.simulate import SimConfig, run_simulation
from edgetune.bundle.sign import load_public_key
from edgetune.core.model import Model
from edgetune.errors import ModelError


def _inputs(assets: Path | None) -> tuple[str, Model, ProbeData, ProbeData]:
    """(description, factory model, probe data with labels, labelled calibration data)."""
    from edgetune.load import load

    try:
        from edgetune.demo import asset_path

        def path(name: str) -> Path:
            return assets / name if assets is not None else asset_path(name)

        model = load(path("model_fp32.onnx"))
        with np.load(path("eval.npz")) as ev, np.load(path("calib.npz")) as ca:
            probe = ProbeData({"input": ev["input"]}, ev["labels"])
            calib = ProbeData({"input": ca["input"][:256]}, ca["labels"][:256])
        return "demo MNIST CNN", model, probe, calib
    except ModelError:
        from edgetune.testing.tiny import tiny_mlp, tiny_mlp_data

        data = tiny_mlp_data(1500, features=256, classes=10)
        model = tiny_mlp(features=256, hidden=256, classes=10)
        labels = predictions(model, {"x": data["x"]})  # the factory model is "right"
        return ("tiny MLP 256-256-10 (demo assets missing)", model,
                ProbeData({"x": data["x"]}, labels), ProbeData({"x": data["x"][:256]}, None))


def _print_deltas(deltas: dict[str, dict[str, Any]]) -> None:
    print("\nDelta size against the full bundle (edgetune bundle diff / patch):")
    print(f"  {'update':36} {'full B':>9} {'delta B':>9} {'ratio':>7} {'tensors sent':>14}"
          f" {'patch identical':>16}")
    for label, s in deltas.items():
        sent = s["tensors_changed"] + s["tensors_added"]
        print(f"  {label:36} {s['full_bytes']:9d} {s['delta_bytes']:9d} {s['ratio']:7.3f} "
              f"{sent:>5d} of {s['tensors']:<6d} {s['identical']!s:>16}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--db", help="Database URL (default: SQLite in the work folder).")
    parser.add_argument("--assets", type=Path, help="Folder with the demo's model_fp32.onnx, "
                        "calib.npz and eval.npz (default: the bundled demo assets).")
    parser.add_argument("--json", type=Path, help="Also write the results as JSON.")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="edgetune-ota-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    what, model, probe, calib = _inputs(args.assets)
    bundles, _, pub = make_releases(work, model, calib, calib=calib)
    deltas = measure_deltas(work, bundles)
    prepared = time.monotonic() - started
    config = SimConfig(devices=args.devices, db_url=args.db)
    result = run_simulation(work, bundles, [load_public_key(pub)], probe, config)
    print(f"Fleet simulation: {args.devices} device clients on loopback, model: {what}, "
          f"database: {args.db or 'SQLite'}; work folder {work}")
    print(f"  prepared models and bundles in {prepared:.1f} s; simulation ran {result.seconds:.1f} s")
    for check in result.checks:
        print(f"  [{'PASS' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    print(f"  device counters: {result.counters}")
    _print_deltas(deltas)
    if args.json:
        args.json.write_text(json.dumps({
            "devices": args.devices, "model": what, "seconds": result.seconds,
            "checks": [c.__dict__ for c in result.checks], "counters": result.counters,
            "deltas": deltas}, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
