"""put / get of one buffer through the Python module, timed.
Usage: python bench.py REPO_DIR MIB. Prints "put <seconds> get <seconds>"."""

import sys
import time

import asheville

n = int(sys.argv[2]) << 20
# Incompressible, like the other sides: random bytes, generated once.
data = __import__("os").urandom(n)
with asheville.Repository.create(sys.argv[1], "bench", "pw") as repo:
    t0 = time.perf_counter()
    repo.put("/big", data)
    t1 = time.perf_counter()
    back = repo.get("/big")
    t2 = time.perf_counter()
    assert back == data
print(f"put {t1 - t0:.4f} get {t2 - t1:.4f}")
