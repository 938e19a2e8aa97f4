#!/usr/bin/env python3
"""What DuckDB does with deleted rows in a table shaped like the store's `rm_points`.

Simulates a steady retention window: every simulated day appends one day of points in
arrival order (ts increasing, series interleaved) in transactions of --batch rows, then
CHECKPOINT, then deletes everything older than one day before the newest point, in
DELETE transactions of --chunk-hours of data each, then CHECKPOINT. After each day it
prints the rows, the file size and the block counts of `PRAGMA database_size`.

At the end, on copies of the final file, it tries what gives the space back:
VACUUM, CHECKPOINT / FORCE CHECKPOINT, close and reopen, a rewrite of the table
(CREATE TABLE AS ... ORDER BY, DROP, RENAME) and a copy into a new file
(ATTACH + COPY FROM DATABASE), with the resulting file size and the time each took.
Last, on another copy, it deletes whole series (as deletion by matcher would): half of
them, then 90%, each followed by a CHECKPOINT.

Reproduce (see docs/operations.md, "Deleted rows and disk space (measured)"):

    python3 -m venv /tmp/duckdb-venv
    /tmp/duckdb-venv/bin/pip install duckdb==2.0.1
    /tmp/duckdb-venv/bin/python docs/experiments/duckdb-deleted-rows.py

Only the standard library and the duckdb package are needed. Everything is written under
--dir (a fresh temporary directory by default) and removed at the end unless --keep.
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

import duckdb

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000

# Column types as in raftmetrics-core/src/store/duckdb.rs.
SCHEMA = """
CREATE TABLE rm_points (
    partition_id UINTEGER NOT NULL,
    sid UINTEGER NOT NULL,
    ts BIGINT NOT NULL,
    value DOUBLE NOT NULL,
    metric_id UINTEGER
);
"""

PARTITIONS = 8
FIELDS = 10


def mib(n):
    return n / (1 << 20)


def db_size(con):
    """(block_size, total_blocks, used_blocks, free_blocks, wal_size) of the main file."""
    con.execute("PRAGMA database_size")
    cols = [d[0] for d in con.description]
    row = dict(zip(cols, con.fetchone()))
    return (
        row["block_size"],
        row["total_blocks"],
        row["used_blocks"],
        row["free_blocks"],
        row["wal_size"],
    )


def row_groups(con):
    return con.execute(
        "SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('rm_points')"
    ).fetchone()[0]


def append_slice(con, day, part, args):
    """Appends slice `part` of --rounds-per-day of one day: --sids series, one point each
    per interval, in --batch-row transactions, rows ordered by (ts, sid) like writes
    arriving over the day."""
    steps = args.points_per_day // args.sids  # points per series per day
    interval = DAY_US // steps
    total = steps * args.sids
    first_row = day * total
    lo = (steps * part // args.rounds_per_day) * args.sids
    hi = (steps * (part + 1) // args.rounds_per_day) * args.sids
    durations = []
    for start in range(lo, hi, args.batch):
        end = min(start + args.batch, hi)
        t0 = time.perf_counter()
        con.execute("BEGIN")
        # i is the global arrival number: i // sids the time step, i % sids the series.
        # Values have two decimals, like a typical gauge.
        con.execute(
            f"""
            INSERT INTO rm_points
            SELECT (sid % {PARTITIONS})::UINTEGER,
                   sid::UINTEGER,
                   (i // {args.sids}) * {interval},
                   round(random() * 100, 2),
                   (sid % {FIELDS} + 1)::UINTEGER
            FROM (SELECT i, i % {args.sids} AS sid
                  FROM range({first_row + start}, {first_row + end}) r(i))
            ORDER BY i
            """
        )
        con.execute("COMMIT")
        durations.append(time.perf_counter() - t0)
    return hi - lo, durations


def delete_old(con, args):
    """Deletes every point older than one day before the newest, one DELETE transaction
    per --chunk-hours of data (`ts < bound` with an increasing bound, as a replicated
    'delete older than' command would). Returns each transaction's duration and rows."""
    lo, hi = con.execute("SELECT min(ts), max(ts) FROM rm_points").fetchone()
    cutoff = hi - DAY_US
    chunk = int(args.chunk_hours * HOUR_US)
    durations, counts = [], []
    bound = lo
    while bound < cutoff:
        bound = min(bound + chunk, cutoff)
        t0 = time.perf_counter()
        con.execute("BEGIN")
        n = con.execute(f"DELETE FROM rm_points WHERE ts < {bound}").fetchone()[0]
        con.execute("COMMIT")
        durations.append(time.perf_counter() - t0)
        counts.append(n)
    return durations, counts


def timed(con, sql):
    t0 = time.perf_counter()
    con.execute(sql)
    return time.perf_counter() - t0


def fmt_dur(ds):
    if not ds:
        return "-"
    return (
        f"n={len(ds)} total={sum(ds):.2f}s median={statistics.median(ds) * 1000:.0f}ms "
        f"max={max(ds) * 1000:.0f}ms"
    )


def state(con, path):
    con_rows = con.execute("SELECT count(*) FROM rm_points").fetchone()[0]
    bs, total, used, free, wal = db_size(con)
    return {
        "rows": con_rows,
        "file": os.path.getsize(path),
        "block_size": bs,
        "total": total,
        "used": used,
        "free": free,
        "wal": wal,
        "row_groups": row_groups(con),
    }


def fmt_state(s):
    return (
        f"rows={s['rows']:>10,} file={mib(s['file']):8.1f} MiB "
        f"blocks total/used/free={s['total']}/{s['used']}/{s['free']} "
        f"row_groups={s['row_groups']}"
    )


def simulate(path, args):
    con = duckdb.connect(path)
    con.execute(f"SET threads = {args.threads}")
    con.execute(SCHEMA)
    con.execute("CHECKPOINT")
    table = []
    one_day_size = None
    for day in range(args.days):
        n, ins, dels, counts, ck1, ck2 = 0, [], [], [], 0.0, 0.0
        peak = 0
        for part in range(args.rounds_per_day):
            k, d = append_slice(con, day, part, args)
            n += k
            ins += d
            ck1 += timed(con, "CHECKPOINT")
            after_append = state(con, path)
            peak = max(peak, after_append["file"])
            d, c = delete_old(con, args)
            dels += d
            counts += c
            ck2 += timed(con, "CHECKPOINT")
        after_append["file"] = peak
        if day == 0:
            one_day_size = after_append["file"]
        after_delete = state(con, path)
        print(
            f"day {day + 1:2d} appended {n:,} rows: insert txns {fmt_dur(ins)}; "
            f"checkpoints {ck1:.2f}s"
        )
        print(f"        after (last) append+checkpoint: {fmt_state(after_append)}")
        if dels:
            print(
                f"        delete txns ({sum(counts):,} rows, {args.chunk_hours} h each): "
                f"{fmt_dur(dels)}; checkpoints {ck2:.2f}s"
            )
        print(f"        after delete+checkpoint: {fmt_state(after_delete)}")
        table.append((day + 1, after_append, after_delete, dels, ck2))
    con.close()
    return table, one_day_size


def reclaim(path, args):
    """Each method on its own copy of the final file."""
    results = []

    def fresh(name):
        p = os.path.join(args.dir, f"reclaim-{name}.duckdb")
        shutil.copyfile(path, p)
        return p

    def report(name, p, seconds, con=None):
        size = os.path.getsize(p)
        extra = ""
        if con is not None:
            bs, total, used, free, wal = db_size(con)
            extra = f" blocks total/used/free={total}/{used}/{free}"
        print(f"  {name:<44} {seconds:7.2f}s  file={mib(size):8.1f} MiB{extra}")
        results.append((name, seconds, size))

    print(f"  {'(starting point)':<44} {'':>8}  file={mib(os.path.getsize(path)):8.1f} MiB")

    # Close and reopen (a restart).
    p = fresh("reopen")
    t0 = time.perf_counter()
    con = duckdb.connect(p)
    con.execute("CHECKPOINT")
    report("reopen + CHECKPOINT", p, time.perf_counter() - t0, con)
    con.close()

    # (b) CHECKPOINT / FORCE CHECKPOINT.
    p = fresh("checkpoint")
    con = duckdb.connect(p)
    report("CHECKPOINT", p, timed(con, "CHECKPOINT"), con)
    report("FORCE CHECKPOINT", p, timed(con, "FORCE CHECKPOINT"), con)
    con.close()
    results.append(("FORCE CHECKPOINT (after close)", 0.0, os.path.getsize(p)))
    print(f"  {'  ... after close':<44} {'':>8}  file={mib(os.path.getsize(p)):8.1f} MiB")

    # (a) VACUUM variants.
    p = fresh("vacuum")
    con = duckdb.connect(p)
    for sql in ("VACUUM", "VACUUM rm_points", "VACUUM ANALYZE rm_points", "VACUUM FULL"):
        try:
            d = timed(con, sql)
            d += timed(con, "CHECKPOINT")
            report(f"{sql}; CHECKPOINT", p, d, con)
        except duckdb.Error as e:
            msg = str(e).splitlines()[0][:90]
            print(f"  {sql:<44} error: {msg}")
    con.close()

    # (c) Rewrite the table inside the same file.
    p = fresh("rewrite")
    con = duckdb.connect(p)
    con.execute(f"SET threads = {args.threads}")
    t0 = time.perf_counter()
    con.execute("BEGIN")
    con.execute("CREATE TABLE t2 AS SELECT * FROM rm_points ORDER BY ts, sid")
    con.execute("DROP TABLE rm_points")
    con.execute("ALTER TABLE t2 RENAME TO rm_points")
    con.execute("COMMIT")
    con.execute("CHECKPOINT")
    report("rewrite (CTAS ORDER BY, DROP, RENAME)", p, time.perf_counter() - t0, con)
    con.close()
    print(f"  {'  ... after close':<44} {'':>8}  file={mib(os.path.getsize(p)):8.1f} MiB")

    # (d) Copy into a new file and swap.
    p = fresh("copy")
    new = os.path.join(args.dir, "reclaim-copy-new.duckdb")
    t0 = time.perf_counter()
    con = duckdb.connect(p)
    con.execute(f"SET threads = {args.threads}")
    con.execute(f"ATTACH '{new}' AS fresh")
    src = con.execute("SELECT current_database()").fetchone()[0]
    con.execute(f"COPY FROM DATABASE \"{src}\" TO fresh")
    con.execute("DETACH fresh")
    con.close()
    os.replace(new, p)
    report("ATTACH new + COPY FROM DATABASE + swap", p, time.perf_counter() - t0)
    return results


def delete_by_series(path, args):
    """Deletion by matcher: some series' points everywhere in the table, so no row group
    is emptied. Half the series, then 90%, each one DELETE and a CHECKPOINT."""
    p = os.path.join(args.dir, "by-series.duckdb")
    shutil.copyfile(path, p)
    con = duckdb.connect(p)
    con.execute(f"SET threads = {args.threads}")
    print(f"  {'(starting point)':<44} {'':>8}  {fmt_state(state(con, p))}")
    for share in (0.5, 0.9):
        bound = int(args.sids * share)
        t0 = time.perf_counter()
        n = con.execute(f"DELETE FROM rm_points WHERE sid < {bound}").fetchone()[0]
        d = time.perf_counter() - t0
        c = timed(con, "CHECKPOINT")
        print(f"  {f'DELETE sid < {bound} ({n:,} rows)':<44} {d:7.2f}s  "
              f"CHECKPOINT {c:.2f}s  {fmt_state(state(con, p))}")
    con.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--points-per-day", type=int, default=1_000_000)
    ap.add_argument("--sids", type=int, default=1_000, help="series (100 series x 10 fields)")
    ap.add_argument("--batch", type=int, default=100_000, help="rows per insert transaction")
    ap.add_argument("--chunk-hours", type=float, default=1.0, help="data per DELETE transaction")
    ap.add_argument("--rounds-per-day", type=int, default=1,
                    help="append / CHECKPOINT / delete / CHECKPOINT rounds per day")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    own_dir = args.dir is None
    if own_dir:
        args.dir = tempfile.mkdtemp(prefix="duckdb-deleted-rows-")
    os.makedirs(args.dir, exist_ok=True)
    path = os.path.join(args.dir, "points.duckdb")
    for f in (path, path + ".wal"):
        if os.path.exists(f):
            os.remove(f)

    print(
        f"duckdb {duckdb.__version__}; {args.days} days x {args.points_per_day:,} points "
        f"({args.sids} series), {args.batch:,} rows per insert txn, "
        f"{args.chunk_hours} h per DELETE txn, {args.rounds_per_day} delete round(s) "
        f"per day, threads={args.threads}"
    )
    t0 = time.perf_counter()
    table, one_day = simulate(path, args)
    print()
    print("| day | rows after delete | largest file after append (MiB) | file after delete (MiB) "
          "| blocks total / used / free | DELETE txns: total / max |")
    print("|---:|---:|---:|---:|---|---|")
    for day, a, d, dels, _ in table:
        print(
            f"| {day} | {d['rows']:,} | {mib(a['file']):.1f} | {mib(d['file']):.1f} "
            f"| {d['total']} / {d['used']} / {d['free']} "
            f"| {fmt_dur(dels) if dels else '-'} |"
        )
    print(f"\none day of points, checkpointed alone: {mib(one_day):.1f} MiB; "
          f"block size {table[0][1]['block_size']} bytes")
    print(f"simulation took {time.perf_counter() - t0:.1f}s\n\nreclaiming space:")
    reclaim(path, args)
    print("\ndeleting by series (a matcher), on a copy of the final file:")
    delete_by_series(path, args)
    if own_dir and not args.keep:
        shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
