#!/usr/bin/python3
"""ops/bench/patroni_probe.py: helper of ops/bench/patroni (Debian's python3
and its python3-psycopg2, which the patroni package pulls in).

  patroni_probe.py ports N
      prints N free TCP ports on 127.0.0.1, one a line.
  patroni_probe.py write LOG CONNINFO
      inserts rows back to back (one connection, autocommit) into table t of
      whichever node CONNINFO reaches (libpq multi-host with
      target_session_attrs=read-write), reconnecting after any error.  Each
      acknowledged insert appends "<unix ns> <server port> <id>" to LOG; each
      failed attempt "<unix ns> E <id>".  Every attempt uses a new id.
  patroni_probe.py analyze LOG EVENTS [IDS]
      EVENTS holds one line per run, "<kind> <t0 unix ns> <old leader port>
      <ok 0|1>".  For each ok run: the time from t0 to the first insert
      acknowledged after t0 by a server other than the old leader, and the
      write stall (the longest gap between consecutive acknowledged inserts
      from the last one before t0 to that first one on the new leader).
      Prints p50/p99/max per kind.  With IDS (the ids left in t at the end),
      also counts acknowledged inserts that are missing.
"""
import os
import socket
import sys
import time


def ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    for s in socks:
        print(s.getsockname()[1])
    for s in socks:
        s.close()


def write(log, conninfo):
    import psycopg2
    out = open(log, "a", buffering=1)
    seq = 0
    conn = cur = None
    port = None
    while True:
        if conn is None:
            try:
                conn = psycopg2.connect(conninfo)
                conn.autocommit = True
                cur = conn.cursor()
                port = conn.info.port
            except psycopg2.Error:
                conn = None
                time.sleep(0.02)   # as ops/bench/failover between attempts
                continue
        seq += 1
        try:
            cur.execute("INSERT INTO t(id) VALUES (%s)", (seq,))
        except psycopg2.Error:
            out.write("%d E %d\n" % (time.time_ns(), seq))
            try:
                conn.close()
            except psycopg2.Error:
                pass
            conn = None
            continue
        out.write("%d %d %d\n" % (time.time_ns(), port, seq))


def pct(sorted_ms, p):
    if not sorted_ms:
        return "-"
    i = (len(sorted_ms) * p + 99) // 100
    return "%d" % sorted_ms[max(i, 1) - 1]


def analyze(log, events, ids_file=None):
    acks = []      # (ns, port)
    acked = []
    errors = 0
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 3:
                continue
            if parts[1] == "E":
                errors += 1
                continue
            acks.append((int(parts[0]), int(parts[1])))
            acked.append(int(parts[2]))
    import bisect
    times = [a[0] for a in acks]
    res = {}
    failed = {}
    with open(events) as f:
        for line in f:
            kind, t0, old, ok = line.split()
            t0, old = int(t0), int(old)
            res.setdefault(kind, ([], []))
            failed.setdefault(kind, 0)
            if ok != "1":
                failed[kind] += 1
                continue
            i = bisect.bisect_right(times, t0)
            j = i
            while j < len(acks) and acks[j][1] == old:
                j += 1
            if j >= len(acks):
                failed[kind] += 1
                continue
            first = acks[j][0]
            start = max(i - 1, 0)
            stall = max(acks[k + 1][0] - acks[k][0] for k in range(start, j)) if j > start else first - t0
            res[kind][0].append((first - t0) // 1000000)
            res[kind][1].append(stall // 1000000)
    for kind in sorted(res):
        to_new, stall = sorted(res[kind][0]), sorted(res[kind][1])
        what = "request" if kind == "switchover" else "kill -9"
        print("%d %ss (%d failed)" % (len(to_new) + failed[kind], kind, failed[kind]))
        print("  %-44s p50 %5s ms  p99 %5s ms  max %5s ms" % (
            what + " to first write acked by the new leader:", pct(to_new, 50), pct(to_new, 99),
            to_new[-1] if to_new else "-"))
        print("  %-44s p50 %5s ms  p99 %5s ms  max %5s ms" % (
            "write stall (longest gap between acks):", pct(stall, 50), pct(stall, 99),
            stall[-1] if stall else "-"))
    print("writes acknowledged: %d; failed attempts (errors, reconnects): %d" % (len(acks), errors))
    if ids_file:
        with open(ids_file) as f:
            present = set(int(x) for x in f if x.strip())
        lost = [i for i in acked if i not in present]
        print("acknowledged writes missing at the end (lost in failovers): %d" % len(lost))


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "ports":
        ports(int(sys.argv[2]))
    elif cmd == "write":
        write(sys.argv[2], sys.argv[3])
    elif cmd == "analyze":
        analyze(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
