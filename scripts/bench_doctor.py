"""How long `edgerep doctor` and `edgerep --version` take, each probe separately: the promise is that no part
takes more than a second, because doctor imports only the runtimes whose answer needs their code.

Each run is a fresh interpreter (`python -m edgerep.cli doctor --json`), so imports are cold as a user meets
them; the probes' own timings come from the JSON, the wall time (interpreter start included) from outside.
Medians over --runs. JSON to --out, a table on stdout.

    python scripts/bench_doctor.py [--runs 7] [--out bench/doctor.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("bench/doctor.json"))
    args = ap.parse_args()

    doctor_cmd = [sys.executable, "-m", "edgerep.cli", "doctor", "--json"]
    version_cmd = [sys.executable, "-m", "edgerep.cli", "--version"]
    probes: dict[str, list[float]] = {}
    walls, version_walls, inside = [], [], []
    cpu_name = None
    for _ in range(args.runs):
        wall, text = timed(doctor_cmd)
        rep = json.loads(text)
        walls.append(wall)
        inside.append(rep["seconds"])
        cpu_name = rep["cpu"].get("brand")
        for name, row in rep["packages"].items():
            probes.setdefault(name, []).append(row["seconds"])
        probes.setdefault("cpu", []).append(rep["cpu"]["seconds"])
        probes.setdefault("gpus", []).append(rep["gpus"]["seconds"])
        version_walls.append(timed(version_cmd)[0])
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": cpu_name, "cores": __import__("os").cpu_count(), "python": platform.python_version(),
                    "note": "shared machine, other jobs running"},
        "command": " ".join(["python", "scripts/bench_doctor.py", "--runs", str(args.runs)]),
        "runs": args.runs,
        "probe_seconds_median": {k: statistics.median(v) for k, v in probes.items()},
        "probe_seconds_max": {k: max(v) for k, v in probes.items()},
        "collect_seconds_median": statistics.median(inside),
        "doctor_wall_seconds_median": statistics.median(walls),
        "version_wall_seconds_median": statistics.median(version_walls),
        "all_probes_under_1s": all(max(v) < 1.0 for v in probes.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'probe':<14}{'median s':>10}{'max s':>10}")
    for name in probes:
        print(f"{name:<14}{result['probe_seconds_median'][name]:>10.3f}{result['probe_seconds_max'][name]:>10.3f}")
    print(f"{'all probes':<14}{result['collect_seconds_median']:>10.3f}")
    print(f"doctor wall (interpreter start included) {result['doctor_wall_seconds_median']:.2f} s, "
          f"--version {result['version_wall_seconds_median']:.2f} s; every probe under 1 s: "
          f"{result['all_probes_under_1s']}")


if __name__ == "__main__":
    main()
