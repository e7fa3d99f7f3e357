"""pytest tests of the asheville module (also runnable as a script:
``python3 tests/test_asheville.py`` runs every test_ function)."""

import os
import sys
import tempfile
import threading

import asheville


def _repo(tmp):
    return asheville.Repository.create(os.path.join(tmp, "data"), "acme", "pw")


def test_bytes_round_trip_and_context_manager():
    with tempfile.TemporaryDirectory() as tmp:
        data = os.urandom(300_000)
        with _repo(tmp) as repo:
            repo.put("/docs/a.bin", data)
            assert repo.get("/docs/a.bin") == data
            st = repo.stat("/docs/a.bin")
            assert st["size"] == 300_000 and st["version"] == 1
        # Closed: calls fail clearly; reopening finds the data.
        try:
            repo.get("/docs/a.bin")
            raise AssertionError("a closed repository answered")
        except asheville.InvalidInputError as e:
            assert e.kind == "invalid_input"
        with asheville.Repository.open(os.path.join(tmp, "data"), "acme", "pw") as again:
            assert again.get("/docs/a.bin") == data


def test_streaming_file_objects():
    with tempfile.TemporaryDirectory() as tmp, _repo(tmp) as repo:
        big = os.urandom(3 << 20)
        with repo.open_file("/big.bin", "wb") as f:
            for i in range(0, len(big), 70_001):
                f.write(big[i : i + 70_001])
        with repo.open_file("/big.bin", "rb") as f:
            head = f.read(10)
            rest = f.read()
        assert head + rest == big
        # An exception inside the block aborts the write.
        try:
            with repo.open_file("/never.bin", "wb") as f:
                f.write(b"x" * 1000)
                raise RuntimeError("stop")
        except RuntimeError:
            pass
        try:
            repo.stat("/never.bin")
            raise AssertionError("an aborted write is visible")
        except asheville.NotFoundError:
            pass


def test_paths_list_delete():
    with tempfile.TemporaryDirectory() as tmp, _repo(tmp) as repo:
        src = os.path.join(tmp, "src")
        os.makedirs(os.path.join(src, "sub"))
        for name, size in [("a.txt", 10), ("sub/b.bin", 70_000)]:
            with open(os.path.join(src, name), "wb") as f:
                f.write(os.urandom(size))
        repo.put_file("/tree", src)
        out = os.path.join(tmp, "out")
        repo.get_file("/tree", out)
        for name in ["a.txt", "sub/b.bin"]:
            with open(os.path.join(src, name), "rb") as a, open(os.path.join(out, name), "rb") as b:
                assert a.read() == b.read(), name
        entries, cursor = repo.list("/tree", depth=1, limit=1)
        assert len(entries) == 1 and cursor is not None
        more, cursor2 = repo.list("/tree", depth=1, cursor=cursor, limit=10)
        assert len(more) == 1 and cursor2 is None
        all_files, _ = repo.list("/tree", depth=0)
        assert sorted(e["path"] for e in all_files if e["type"] == "file") == ["tree/a.txt", "tree/sub/b.bin"]
        repo.delete("/tree/a.txt")
        try:
            repo.get("/tree/a.txt")
            raise AssertionError("a deleted file answered")
        except asheville.NotFoundError as e:
            assert e.kind == "not_found"


def test_errors_are_python_exceptions_with_kinds():
    with tempfile.TemporaryDirectory() as tmp:
        _repo(tmp).close()
        try:
            asheville.Repository.open(os.path.join(tmp, "data"), "acme", "wrong")
            raise AssertionError("a wrong passphrase opened the repository")
        except asheville.WrongKeyError as e:
            assert e.kind == "wrong_key" and isinstance(e, asheville.AshevilleError)
        with asheville.Repository.open(os.path.join(tmp, "data"), "acme", "pw") as repo:
            for bad in ["/a/../b", ""]:
                try:
                    repo.put(bad, b"x")
                    raise AssertionError(f"{bad!r} accepted")
                except asheville.InvalidInputError:
                    pass
            try:
                repo.open_file("/x", "r+")
                raise AssertionError("bad mode accepted")
            except ValueError:
                pass


def test_sync_and_usage():
    with tempfile.TemporaryDirectory() as tmp, _repo(tmp) as repo:
        src = os.path.join(tmp, "inbox")
        os.makedirs(src)
        for i in range(20):
            with open(os.path.join(src, f"m{i}.eml"), "wb") as f:
                f.write(os.urandom(1000 + i))
        job = repo.sync_dir("alice", "inbox", src)
        assert job["state"] == "succeeded", job
        assert job["progress"]["items_stored"] == 20
        assert repo.get("/sync/alice/inbox/m3.eml") == open(os.path.join(src, "m3.eml"), "rb").read()
        again = repo.sync_dir("alice", "inbox", src)
        assert again["progress"]["items_stored"] == 0
        status = repo.sync_status("alice")
        assert [s["source"]["name"] for s in status] == ["inbox"]
        assert status[0]["last_job"]["state"] == "succeeded"
        rows = repo.usage("sync.items")
        assert sum(int(r["value"]) for r in rows) == 20


def test_the_gil_is_released_during_io():
    # While one thread stores 64 MiB, another keeps running Python code.
    with tempfile.TemporaryDirectory() as tmp, _repo(tmp) as repo:
        data = os.urandom(64 << 20)
        ticks = []
        done = threading.Event()

        def count():
            while not done.is_set():
                ticks.append(1)

        t = threading.Thread(target=count)
        t.start()
        before = len(ticks)
        repo.put("/big", data)
        during = len(ticks) - before
        done.set()
        t.join()
        assert during > 1000, f"the other thread barely ran ({during} ticks): the GIL was held"


def test_readme_example():
    readme = os.path.join(os.path.dirname(__file__), "..", "README.md")
    code = open(readme).read().split("```python\n")[1].split("```")[0]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            exec(compile(code, "README.md", "exec"), {})
        finally:
            os.chdir(cwd)


if __name__ == "__main__":
    tests = [(n, f) for n, f in sorted(globals().items()) if n.startswith("test_")]
    for name, f in tests:
        f()
        print(f"ok {name}")
    print(f"{len(tests)} passed")
    sys.exit(0)
