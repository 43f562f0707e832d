"""How far two runs of benchmarks/suite.py disagree, cell by cell.

    python benchmarks/suite.py --json a.json && python benchmarks/suite.py --json b.json
    python benchmarks/compare.py a.json b.json [--tolerance 0.10]

For every workload and contender both runs measured: the relative difference of the median time
ratio (b / a - 1), of the forward pass's median time, and of the median extra peak memory. A
memory difference under --memory-floor MiB counts as agreement whatever its relative size (a
few pages of a call that needs almost nothing). Cells beyond --tolerance are marked with "!";
the exit code is 1 if there is any, 0 if the runs agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table


def differences(a: dict, b: dict, memory_floor: float) -> list[tuple[str, str, str, float]]:
    """(workload, contender, quantity, relative difference) of every cell both reports have,
    the difference 0.0 where a memory cell moved by less than ``memory_floor`` MiB."""
    rows = []
    baseline = a["header"]["baseline"]
    for name, first in a["workloads"].items():
        second = b["workloads"].get(name)
        if second is None:
            continue
        for contender, cell in first["contenders"].items():
            other = second["contenders"].get(contender)
            if other is None or cell["seconds"] is None or other["seconds"] is None:
                continue
            if contender == baseline:  # its ratio is 1 by definition: compare its time
                quantity, x, y = "seconds", cell["seconds"]["median"], other["seconds"]["median"]
            else:
                quantity, x, y = "ratio", cell["ratio"]["median"], other["ratio"]["median"]
            rows.append((name, contender, quantity, y / x - 1))
        peaks, other_peaks = first.get("extra_peak_mib", {}), second.get("extra_peak_mib", {})
        for contender, peak in peaks.items():
            other = other_peaks.get(contender)
            if other is None or "median" not in peak or "median" not in other:
                continue
            x, y = peak["median"], other["median"]
            close = abs(y - x) < memory_floor
            rows.append((name, contender, "memory", 0.0 if close else (y - x) / max(x, 1e-9)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description="Compare two benchmarks/suite.py reports.")
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument("--memory-floor", type=float, default=0.5)
    args = parser.parse_args()
    a, b = (json.loads(path.read_text()) for path in (args.a, args.b))
    rows = differences(a, b, args.memory_floor)
    table = Table(title=f"{args.b} against {args.a}: b / a - 1 of each median")
    for column in ("workload", "contender", "what", "difference"):
        table.add_column(column, justify="right" if column == "difference" else "left")
    for name, contender, quantity, difference in rows:
        mark = " !" if abs(difference) > args.tolerance else ""
        table.add_row(name, contender, quantity, f"{difference:+.1%}{mark}")
    console = Console(width=max(Console().width, 120))
    console.print(table)
    beyond = [row for row in rows if abs(row[3]) > args.tolerance]
    worst = max((abs(row[3]) for row in rows), default=0.0)
    console.print(
        f"{len(beyond)} of {len(rows)} cells differ by more than {args.tolerance:.0%} "
        f"(the largest by {worst:.1%})",
        highlight=False,
    )
    return 1 if beyond else 0


if __name__ == "__main__":
    sys.exit(main())
