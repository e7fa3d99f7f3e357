#!/usr/bin/env python3
"""The peers benchmark's dataset, from a fixed seed.

    dataset.py DIR [MB]      make DIR (about MB MiB, default 1024) unless DIR/.done exists
    dataset.py --change DIR SAVE   change 1% of DIR's files, saving the originals in SAVE
    dataset.py --revert DIR SAVE   put the originals back (bytes and mtimes)

Contents: large random files of 1-64 MiB; 20,000 small files of 1-16 KiB,
half text and half random; 200 MiB of duplicated files (copies of large
ones). Every run with the same seed makes the same bytes.
"""
import os
import random
import shutil
import sys

WORDS = ("the chunk backend erasure parity shard tenant storage of and restic "
         "pack sealed blob key write read path a to is").split()


def text(rng, n):
    out = []
    size = 0
    while size < n:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return (" ".join(out)).encode()[:n]


def make(root, mb):
    if os.path.exists(os.path.join(root, ".done")):
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(20261124)
    small_total = 0
    for i in range(20_000):
        d = os.path.join(root, "small", f"{i // 500:03}")
        os.makedirs(d, exist_ok=True)
        n = rng.randint(1024, 16 * 1024)
        data = text(rng, n) if i % 2 == 0 else rng.randbytes(n)
        with open(os.path.join(d, f"f{i:05}.{'txt' if i % 2 == 0 else 'bin'}"), "wb") as f:
            f.write(data)
        small_total += n
    dup = 200 << 20
    large_budget = max((mb << 20) - small_total - dup, 64 << 20)
    os.makedirs(os.path.join(root, "large"), exist_ok=True)
    large = []
    made = 0
    i = 0
    while made < large_budget:
        n = min(rng.randint(1 << 20, 64 << 20), large_budget - made)
        p = os.path.join(root, "large", f"L{i:03}.bin")
        with open(p, "wb") as f:
            left = n
            while left:
                k = min(left, 8 << 20)
                f.write(rng.randbytes(k))
                left -= k
        large.append((p, n))
        made += n
        i += 1
    os.makedirs(os.path.join(root, "dup"), exist_ok=True)
    copied = 0
    j = 0
    while copied < dup and large:
        p, n = large[j % len(large)]
        shutil.copyfile(p, os.path.join(root, "dup", f"copy{j:03}-{os.path.basename(p)}"))
        copied += n
        j += 1
    open(os.path.join(root, ".done"), "w").close()


def files(root):
    out = []
    for d, _, names in os.walk(root):
        for n in names:
            if n != ".done":
                out.append(os.path.join(d, n))
    return sorted(out)


def change(root, save):
    """Changes every 100th file: rewrites 4 KiB in its middle (or appends)."""
    shutil.rmtree(save, ignore_errors=True)
    rng = random.Random(7)
    for k, p in enumerate(files(root)[::100]):
        keep = os.path.join(save, f"{k:05}")
        os.makedirs(keep)
        shutil.copy2(p, os.path.join(keep, "data"))
        with open(os.path.join(keep, "path"), "w") as f:
            f.write(p)
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            f.seek(size // 2)
            f.write(rng.randbytes(4096))


def revert(root, save):
    for k in sorted(os.listdir(save)):
        with open(os.path.join(save, k, "path")) as f:
            p = f.read()
        os.remove(p)
        shutil.copy2(os.path.join(save, k, "data"), p)
    shutil.rmtree(save)


if __name__ == "__main__":
    if sys.argv[1] == "--change":
        change(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "--revert":
        revert(sys.argv[2], sys.argv[3])
    else:
        make(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1024)
