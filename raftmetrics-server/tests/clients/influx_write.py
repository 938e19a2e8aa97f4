#!/usr/bin/env python3
"""Writes a deterministic set of points to a RaftMetrics control node through the two
InfluxDB client libraries from PyPI, `influxdb` (the 1.x API, `POST /write`) and
`influxdb-client` (the 2.x API, `POST /api/v2/write`), and reports what it sent.

    influx_write.py --url http://127.0.0.1:PORT --token TOKEN --seed 7 \
        --points points.jsonl --report report.json

`--points` gets one JSON object per stored point, as the server must store it:
`{"metric": "<measurement>_<field>", "tags": {...}, "value": <float>, "ts_us": <int>}`.
`--report` gets one JSON object: how each 1.x client authenticated (the scheme of its
`Authorization` header and the query keys it sent) and every refused request (the
exception's HTTP status and the parsed body), for the caller to check.

Every value is a dyadic rational of few significant bits (k/1024, k * 2**-30, integers
below 2**40), so that sums over any subset, in any order, are exact in binary64.

The process exits non-zero when a write that must succeed fails, or a request that must be
refused is accepted.
"""

import argparse
import json
import random
import sys
from urllib.parse import parse_qsl, urlsplit

import influxdb
from influxdb.exceptions import InfluxDBClientError, InfluxDBServerError
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

# 2024-01-20T00:00:00Z.
T0_S = 1_705_708_800
NS = 10**9

# Tag values a line needs escaped: spaces, commas, equals signs; a backslash (not before a
# special character), non-ASCII text.
SITES = ["north hall", "dock,7", "a=b lab", "rack\\7", "zürich, west=2", "plain"]
MOUNTS = ["/", "/var/lib data", "/mnt/a,b", "/srv/x=y"]
REGIONS = ["eu west", "us,east", "ap=south", "sa-1"]
IFACES = ["eth0", "wl an", "br,0"]


def expected(measurement, tags, fields, ts_us):
    """The points the server stores for one line: one per field."""
    out = []
    for field, value in sorted(fields.items()):
        if isinstance(value, bool):
            value = 1.0 if value else 0.0
        out.append(
            {
                "metric": f"{measurement}_{field}",
                "tags": dict(tags),
                "value": float(value),
                "ts_us": ts_us,
            }
        )
    return out


class AuthLog:
    """Records the `Authorization` scheme and the query keys of each request a
    `requests` session sends (through a response hook)."""

    def __init__(self):
        self.seen = []

    def hook(self, response, *args, **kwargs):
        request = response.request
        header = request.headers.get("Authorization", "")
        self.seen.append(
            {
                "path": urlsplit(request.url).path,
                "scheme": header.split(" ", 1)[0] if header else None,
                "query_keys": sorted({k for k, _ in parse_qsl(urlsplit(request.url).query)}),
                "status": response.status_code,
            }
        )


def v1_client(host, port, auth_log, **kwargs):
    client = influxdb.InfluxDBClient(host=host, port=port, database="telegraf", retries=1, timeout=30, **kwargs)
    client._session.hooks["response"].append(auth_log.hook)
    return client


def refusal(case, status, body):
    try:
        parsed = json.loads(body) if body else None
    except (TypeError, ValueError):
        parsed = {"unparsed": body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)}
    return {"case": case, "status": status, "body": parsed}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--points", required=True)
    ap.add_argument("--report", required=True)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    url = urlsplit(args.url)
    host, port = url.hostname, url.port
    sent = []
    report = {"auth": {}, "refusals": []}

    # --- influxdb (1.x API). Its default authentication: HTTP Basic, the token as the
    # password (the user name is ignored by the server).
    log_basic = AuthLog()
    basic = v1_client(host, port, log_basic, username="raftmetrics", password=args.token)
    # Milliseconds, in batches of 40 (several requests), with rp and consistency.
    points = []
    for i in range(120):
        ts_ms = T0_S * 1000 + i * 37_000 + rng.randrange(1000)
        tags = {"site": SITES[i % len(SITES)], "sensor": f"s{rng.randrange(4)}"}
        fields = {
            "temp_c": rng.randrange(-40 * 1024, 45 * 1024) / 1024,
            "humidity": rng.randrange(0, 101),
            "ok": rng.random() < 0.8,
        }
        points.append({"measurement": "weather", "tags": tags, "fields": fields, "time": ts_ms})
        sent += expected("weather", tags, fields, ts_ms * 1000)
    basic.write_points(points, time_precision="ms", retention_policy="autogen", consistency="one", batch_size=40)
    # No precision: nanoseconds, the protocol's default.
    points = []
    for i in range(30):
        ts_ns = (T0_S + 3600 + i * 61) * NS + rng.randrange(NS)
        tags = {"site": SITES[rng.randrange(len(SITES))]}
        fields = {"pressure_hpa": rng.randrange(950 * 1024, 1050 * 1024) / 1024}
        points.append({"measurement": "weather", "tags": tags, "fields": fields, "time": ts_ns})
        sent += expected("weather", tags, fields, ts_ns // 1000)
    basic.write_points(points)
    report["auth"]["influxdb_default"] = log_basic.seen

    # The same library with an Authorization header of its own (the `headers` option, which
    # replaces Basic), gzip, microseconds.
    log_header = AuthLog()
    header = v1_client(
        host,
        port,
        log_header,
        username=None,
        password=None,
        headers={"Authorization": f"Token {args.token}"},
        gzip=True,
    )
    points = []
    for i in range(80):
        ts_us = (T0_S + i * 45) * 1_000_000 + rng.randrange(1_000_000)
        tags = {"host": f"db-{i % 5}", "mount": MOUNTS[rng.randrange(len(MOUNTS))]}
        fields = {
            "used_bytes": rng.randrange(-(2**39), 2**40),
            "free_pct": rng.randrange(0, 100 * 1024) / 1024,
        }
        points.append({"measurement": "disk", "tags": tags, "fields": fields, "time": ts_us})
        sent += expected("disk", tags, fields, ts_us)
    header.write_points(points, time_precision="u", database="other_db")
    report["auth"]["influxdb_header"] = log_header.seen

    # The 1.x password parameter: `/write?u=...&p=<token>`, as clients that authenticate by
    # query string send it. The server refuses it: a token in a URL counts as leaked.
    log_query = AuthLog()
    query = v1_client(host, port, log_query, username=None, password=None)
    try:
        query.write(
            "weather,site=leak temp_c=1 1705708800000000000",
            params={"db": "telegraf", "u": "raftmetrics", "p": args.token},
            protocol="line",
        )
        print("a token in the query string (p=) was accepted", file=sys.stderr)
        return 1
    except InfluxDBClientError as e:
        report["refusals"].append(refusal("influxdb_query_password", e.code, e.content))
    report["auth"]["influxdb_query"] = log_query.seen

    # A string field refuses the whole request, its valid points included.
    try:
        basic.write_points(
            [
                {"measurement": "rejected", "tags": {"site": "x"}, "fields": {"good": 1.0}, "time": T0_S},
                {"measurement": "rejected", "tags": {"site": "y"}, "fields": {"good": 2.0, "note": "text"}, "time": T0_S},
            ],
            time_precision="s",
        )
        print("influxdb: a string field was accepted", file=sys.stderr)
        return 1
    except InfluxDBClientError as e:
        report["refusals"].append(refusal("influxdb_string_field", e.code, e.content))
    except InfluxDBServerError as e:
        report["refusals"].append(refusal("influxdb_string_field", 500, e.args[0] if e.args else None))

    # --- influxdb-client (2.x API): `Authorization: Token <token>`.
    with InfluxDBClient(url=args.url, token=args.token, org="raftmetrics", timeout=30_000) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        # Nanoseconds; the first points lie 1 ns before and 999 ns after a 10 minute
        # boundary, which must land in the microseconds that hold them.
        boundary = (T0_S + 600) * NS
        records = []
        for i in range(90):
            if i == 0:
                ts_ns = boundary - 1
            elif i == 1:
                ts_ns = boundary + 999
            else:
                ts_ns = (T0_S + i * 40) * NS + rng.randrange(NS)
            tags = {"host": f"m{i % 7}", "region": REGIONS[rng.randrange(len(REGIONS))], "note": "k=v, x"}
            fields = {
                "load": rng.randrange(0, 64 * 1024) / 1024,
                "procs": rng.randrange(0, 5000),
                "up": rng.random() < 0.9,
            }
            p = Point("machine")
            for k, v in tags.items():
                p = p.tag(k, v)
            for k, v in fields.items():
                p = p.field(k, v)
            records.append(p.time(ts_ns, WritePrecision.NS))
            sent += expected("machine", tags, fields, ts_ns // 1000)
        write.write(bucket="metrics", record=records)
        # Seconds: points, and dictionaries with the write's precision.
        records = []
        for i in range(40):
            ts_s = T0_S + 7200 + i * 90
            tags = {"host": f"m{i % 7}", "region": REGIONS[i % len(REGIONS)]}
            fields = {"load": rng.randrange(0, 64 * 1024) / 1024, "procs": rng.randrange(0, 5000)}
            if i % 2 == 0:
                p = Point("machine")
                for k, v in tags.items():
                    p = p.tag(k, v)
                for k, v in fields.items():
                    p = p.field(k, v)
                records.append(p.time(ts_s, WritePrecision.S))
            else:
                records.append({"measurement": "machine", "tags": tags, "fields": fields, "time": ts_s})
            sent += expected("machine", tags, fields, ts_s * 1_000_000)
        write.write(bucket="metrics", record=records, write_precision=WritePrecision.S)

        # A string field: refused whole, in InfluxDB's error shape.
        try:
            write.write(
                bucket="metrics",
                record=[
                    Point("rejected").tag("site", "x").field("good", 3.0).time(T0_S, WritePrecision.S),
                    Point("rejected").tag("site", "z").field("good", 4.0).field("note", "text").time(T0_S, WritePrecision.S),
                ],
            )
            print("influxdb-client: a string field was accepted", file=sys.stderr)
            return 1
        except ApiException as e:
            report["refusals"].append(refusal("influxdb_client_string_field", e.status, e.body))

    # A token the server does not know.
    with InfluxDBClient(url=args.url, token="not-a-configured-token", org="raftmetrics", timeout=30_000) as client:
        try:
            client.write_api(write_options=SYNCHRONOUS).write(bucket="metrics", record="machine,host=m0 load=1 1705708800")
            print("influxdb-client: an unknown token was accepted", file=sys.stderr)
            return 1
        except ApiException as e:
            report["refusals"].append(refusal("influxdb_client_unknown_token", e.status, e.body))

    # gzip, microseconds; tiny values (multiples of 2**-30) and large integers.
    with InfluxDBClient(url=args.url, token=args.token, org="raftmetrics", enable_gzip=True, timeout=30_000) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        records = []
        for i in range(70):
            ts_us = (T0_S + 1800 + i * 33) * 1_000_000 + rng.randrange(1_000_000)
            tags = {"iface": IFACES[rng.randrange(len(IFACES))], "host": f"r{i % 3}"}
            fields = {
                "rx_bytes": rng.randrange(0, 2**40),
                "drop_rate": rng.randrange(1, 2**20) * 2.0**-30,
            }
            p = Point("net")
            for k, v in tags.items():
                p = p.tag(k, v)
            for k, v in fields.items():
                p = p.field(k, v)
            records.append(p.time(ts_us, WritePrecision.US))
            sent += expected("net", tags, fields, ts_us)
        write.write(bucket="metrics", org="raftmetrics", record=records, write_precision=WritePrecision.US)

    with open(args.points, "w", encoding="utf-8") as f:
        for p in sent:
            f.write(json.dumps(p, ensure_ascii=False, sort_keys=True) + "\n")
    with open(args.report, "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
