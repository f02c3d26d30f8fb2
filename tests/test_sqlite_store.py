"""Several processes opening the same new cache file at once must all get a working connection
(SQLite answers "database is locked" to a concurrent switch to WAL mode without waiting)."""

from __future__ import annotations

import multiprocessing as mp

from dataforge.sqlite_store import connect_shared

SCHEMA = "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"


def _open_and_write(path: str, who: int, start, errors) -> None:
    start.wait()
    try:
        conn = connect_shared(path, SCHEMA)
        conn.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"k{who}", "v"))
        conn.close()
    except Exception as exc:  # reported to the parent, which fails the test
        errors.put(f"{who}: {exc}")


def test_concurrent_first_opens_all_succeed(tmp_path):
    ctx = mp.get_context("fork")
    for round_ in range(15):
        path = str(tmp_path / f"shared{round_}.sqlite")
        start, errors = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open_and_write, args=(path, i, start, errors)) for i in range(12)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(60)
        found = []
        while not errors.empty():
            found.append(errors.get())
        assert found == [] and [p.exitcode for p in procs] == [0] * 12
        rows = connect_shared(path, SCHEMA).execute("SELECT COUNT(*) FROM kv").fetchone()[0]
        assert rows == 12
