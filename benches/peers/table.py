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
tools = [t for t in dict.fromkeys(r["tool"] for r in rows) if t != "disk"]
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

# The disk: a backup that syncs its repository cannot finish before the
# disk has taken every byte of it, so the repository's size over the disk's
# write speed (probed in the same round) is that backup's floor.
by_round = {(r["tool"], r["step"], r["round"]): r for r in rows}
probe = {k[2]: float(r["wall_s"]) for k, r in by_round.items() if k[0] == "disk" and k[1] == "write" and r["wall_s"]}
reads = [2**30 / float(r["wall_s"]) / 1e6 for k, r in by_round.items() if k[0] == "disk" and k[1] == "read" and r["wall_s"]]
if probe:
    w = [2**30 / v / 1e6 for v in probe.values()]
    line = (f"\nDisk under the repositories (1 GiB with O_DIRECT, once per round): "
            f"write {statistics.median(w):.0f} MB/s ({min(w):.0f}-{max(w):.0f})")
    if reads:
        line += f", read {statistics.median(reads):.0f} MB/s ({min(reads):.0f}-{max(reads):.0f})"
    print(line + ". Each initial backup against its floor, its repository written at the "
          "round's speed (medians over rounds); the last column is the most a tool could "
          "reach against restic's backup on this disk:\n")
    print("| tool | initial backup | floor | backup / floor | restic's backup / floor |")
    print("|---|---:|---:|---:|---:|")
    for t in tools:
        floors, ratios, best = [], [], []
        for rnd, secs in probe.items():
            b, repo = by_round.get((t, "backup", rnd)), by_round.get((t, "repo", rnd))
            rb = by_round.get(("restic", "backup", rnd))
            if not b or not repo or not b["wall_s"] or not repo["repo_bytes"]:
                continue
            floor = float(repo["repo_bytes"]) / (2**30 / secs)
            floors.append(floor)
            ratios.append(float(b["wall_s"]) / floor)
            if rb and rb["wall_s"]:
                best.append(float(rb["wall_s"]) / floor)
        if floors:
            print(f"| {t} | {med(t, 'backup', 'wall_s'):.2f} s | {statistics.median(floors):.2f} s | "
                  f"{statistics.median(ratios):.2f} | "
                  + (f"{statistics.median(best):.2f}× |" if best else "– |"))
