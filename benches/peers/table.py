#!/usr/bin/env python3
"""Prints the peers table from run.sh's results.csv: medians per tool and
step, each figure also as a ratio to restic's in the same run.

    table.py results.csv DATA_BYTES DATA_FILES
"""
import csv
import statistics
import sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1])))
data_bytes, data_files = int(sys.argv[2]), int(sys.argv[3])
samples = defaultdict(list)
for r in rows:
    for k in ("wall_s", "cpu_s", "rss_kb", "repo_bytes", "repo_objects"):
        if r[k]:
            samples[(r["tool"], r["step"], k)].append(float(r[k]))
tools = list(dict.fromkeys(r["tool"] for r in rows))
rounds = len({r["round"] for r in rows})
NAN = float("nan")


def med(tool, step, key):
    v = samples.get((tool, step, key))
    return statistics.median(v) if v else NAN


def cell(tool, step, key, kind):
    """kind: 'mbs' (throughput), 'time' (seconds), 'rss' (KiB), 'size' (bytes)."""
    v, base = med(tool, step, key), med("restic", step, key)
    if v != v:
        return "–"
    if kind == "mbs":
        v, base = data_bytes / v / 1e6, data_bytes / base / 1e6
        text, r = f"{v:.0f} MB/s", v / base
    elif kind == "time":
        text, r = (f"{v:.2f} s" if step != "backup" else f"{v:.1f} s"), base / v
    elif kind == "rss":
        text, r = f"{v / 1024:.0f} MiB", v / base
    else:
        text, r = f"{v / 2**20:.0f} MiB", v / base
    return text if r != r or tool == "restic" else f"{text} ({r:.2f}×)"


print(f"\nPeers: {data_bytes / 2**20:.0f} MiB in {data_files} files, {rounds} rounds, medians. "
      "(×) against restic in the same run: for speed higher is better, "
      "for memory and size it is tool / restic.\n")
print("| tool | initial backup | unchanged backup | after 1% changed | restore | CPU of initial backup | peak RSS backup | peak RSS restore | repository | objects |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for t in tools:
    print("| " + " | ".join([
        t,
        cell(t, "backup", "wall_s", "mbs"),
        cell(t, "unchanged", "wall_s", "time"),
        cell(t, "changed", "wall_s", "time"),
        cell(t, "restore", "wall_s", "mbs"),
        cell(t, "backup", "cpu_s", "time"),
        cell(t, "backup", "rss_kb", "rss"),
        cell(t, "restore", "rss_kb", "rss"),
        cell(t, "repo", "repo_bytes", "size"),
        f"{med(t, 'repo', 'repo_objects'):.0f}",
    ]) + " |")
