#!/usr/bin/env bash
# tests/integration/replication/replication.sh BUILD SRC: page-level
# replication against real etcd and agents. Every check compares data:
# positions, checksums recomputed from the files by tests/tools/dbtool,
# rows, the ledger of acknowledged writes.
BUILD=$1 SRC=$2
. "$SRC/tests/integration/lib/cluster.sh"
WORKLOAD=$SRC/tests/integration/replication/workload.mjs
# small logs so compaction happens; short quorum timeout; quick polls
AGENT_FLAGS="--log-keep 262144 --quorum-timeout-ms 1500 --pull-wait-ms 500 --catchup-timeout 700ms"
start_cluster 5

metric() { curl -fsS "$(eval echo "\$AGENT_URL_$1")/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
# positions TENANT: "node txid checksum" per instance
positions() {
    admin GET "/v1/tenants/$1" >/dev/null
    jq -r '.instances[] | "\(.node) \(.txid) \(.checksum)"' "$T_DIR/body"
}
token_for() { admin POST "/v1/tenants/$1/tokens" '{"access":"rw","ttl_s":3600}' >/dev/null; jq -r .token "$T_DIR/body"; }
# check_copies TENANT LABEL: replicas' files recompute to the primary's checksum; rows equal everywhere
check_copies() {
    local tenant=$1 label=$2 ck n f got rows ref=""
    if wait_until 20 in_step "$tenant"; then ok "$label: all instances reach one position"
    else not_ok "$label: all instances reach one position" "$(positions "$tenant")"; show_logs; fi
    ck=$(positions "$tenant" | awk 'NR==1 {print $3}')
    for n in n2 n3; do
        f=$(db_of "$n" "$tenant")
        got=$("$DBTOOL" checksum "$f" | cut -d' ' -f1)
        is "$label: $n's file recomputes to the primary's checksum" "$ck" "$got"
    done
    for n in n1 n2 n3; do
        f=$(db_of "$n" "$tenant")
        rows=$("$DBTOOL" query "$f" "SELECT (SELECT group_concat(name || ':' || sql, ';') FROM (SELECT * FROM sqlite_master ORDER BY name)), (SELECT sum(bal) || '/' || count(*) FROM acct), (SELECT count(*) || '/' || sum(length(b)) || '/' || max(id) FROM blobs), (SELECT count(*) || '/' || sum(n) FROM ledger), (SELECT quick_check FROM pragma_quick_check)" | md5sum)
        if [ -z "$ref" ]; then ref=$rows; fi
        is "$label: $n's rows equal n1's" "$ref" "$rows"
    done
}

r=$(admin POST /v1/tenants '{"id":"r1","region":"ams","replicas":2}')
is "tenant r1 created" 201 "$(status_of "$r")"
TOK=$(token_for r1)
URL="$AGENT_URL_n1/t/r1"

# --- 1. thousands of random transactions with readers on a replica --------------
node "$WORKLOAD" "$URL" "$TOK" 1 >/dev/null   # schema and accounts
wait_until 10 test -n "$(db_of n2 r1)" || not_ok "n2 holds its copy of r1"
# a new tenant's copies are born as the primary's empty database: the first
# writes reach them as records, with no snapshot
wait_until 10 in_step r1 || not_ok "r1's first writes reached both replicas"
is "the new tenant reached its replicas without a snapshot" "0 0 0" \
    "$(metric n1 shoal_agent_repl_snapshots_sent_total) $(metric n2 shoal_agent_repl_snapshots_installed_total) $(metric n3 shoal_agent_repl_snapshots_installed_total)"
# SHOAL_TEST_SCALE (percent; the sanitizer build sets it) shrinks the long runs
TXNS=$((2000 * ${SHOAL_TEST_SCALE:-100} / 100)) READS=$((12000 * ${SHOAL_TEST_SCALE:-100} / 100))
"$DBTOOL" readers "$(db_of n2 r1)" "$READS" "SELECT sum(bal) = 100000 AND count(*) = 100 FROM acct" >"$T_DIR/readers.out" &
READER=$!
out=$(SEED=7 node "$WORKLOAD" "$URL" "$TOK" "$TXNS")
is "workload: $TXNS transactions acknowledged" "$TXNS" "$(jq .ok <<<"$out")" || echo "# $out"
is "workload: nothing failed" 0 "$(jq .failed <<<"$out")"
wait "$READER"
read -r _ reads _ violations _ <"$T_DIR/readers.out"
is "readers on the replica never saw a half-applied transaction" 0 "$violations"
like "readers on the replica kept reading while records applied" '^[1-9][0-9]*$' "$reads"
check_copies r1 "random workload"
is "n2: no checksum mismatch after any record" 0 "$(metric n2 shoal_agent_repl_checksum_mismatches_total)"
is "n3: no checksum mismatch after any record" 0 "$(metric n3 shoal_agent_repl_checksum_mismatches_total)"
txid=$(positions r1 | awk 'NR==1 {print $2}')
is "/metrics: the primary's position of r1" "$((16#$txid))" "$(metric n1 'shoal_agent_tenant_txid{tenant="r1",role="primary"}')"
is "/metrics: n2's position of r1, and its lag 0" "$((16#$txid)) 0.000" \
    "$(metric n2 'shoal_agent_tenant_txid{tenant="r1",role="replica"}') $(metric n2 'shoal_agent_tenant_lag_seconds{tenant="r1",role="replica"}')"
sent=$(metric n1 shoal_agent_repl_bytes_sent_total); raw=$(metric n1 shoal_agent_repl_bytes_uncompressed_total)
is "lz4: bytes sent ($sent) are fewer than uncompressed ($raw)" 1 "$(awk -v a="$sent" -v b="$raw" 'BEGIN {print (a > 0 && a < b) ? 1 : 0}')"

# --- 2. kill -9 of a replica while records arrive -------------------------------
: >"$T_DIR/ledger"
for delay in 0.3 0.7 1.1; do
    SEED=$((30 + ${delay#*.})) TOLERATE_ERRORS=1 node "$WORKLOAD" "$URL" "$TOK" 400 "$T_DIR/ledger" >"$T_DIR/w.out" &
    W=$!
    sleep "$delay"
    kill -KILL "$PID_agent_n3"; wait "$PID_agent_n3" 2>/dev/null
    start_agent n3
    wait "$W"
done
wait_until 20 curl -fsS "$AGENT_URL_n3/healthz" >/dev/null
check_copies r1 "replica killed mid-apply"
acked=$(sort -n "$T_DIR/ledger" | uniq | wc -l)
is "every acknowledged write is on the restarted replica ($acked acknowledged)" 0 "$(missing_acked n3 r1)"

# --- 3. kill -9 of the primary while it commits ---------------------------------
: >"$T_DIR/ledger"
SEED=13 TOLERATE_ERRORS=1 node "$WORKLOAD" "$URL" "$TOK" 600 "$T_DIR/ledger" >"$T_DIR/w.out" &
W=$!
sleep 1
kill -KILL "$PID_agent_n1"; wait "$PID_agent_n1" 2>/dev/null
start_agent n1
wait "$W"
wait_until 20 curl -fsS "$AGENT_URL_n1/healthz" >/dev/null
# one more write after the restart: the primary serves again
out=$(SEED=17 node "$WORKLOAD" "$URL" "$TOK" 5)
is "primary restarted after kill -9 takes writes again" 5 "$(jq .ok <<<"$out")" || { echo "# $out"; show_logs; }
check_copies r1 "primary killed mid-commit"
for n in n1 n2 n3; do
    is "$n holds every write acknowledged before and after the primary's crash" 0 "$(missing_acked $n r1)"
done

# --- 3b. the primary's WAL is lost (as after a power cut: a commit syncs the
# replication log, not the WAL): the file is rolled forward from the log ----------
: >"$T_DIR/ledger"
SEED=14 TOLERATE_ERRORS=1 node "$WORKLOAD" "$URL" "$TOK" 400 "$T_DIR/ledger" >"$T_DIR/w.out" &
W=$!
sleep 1
kill -KILL "$PID_agent_n1"; wait "$PID_agent_n1" 2>/dev/null
f=$(db_of n1 r1); rm -f "$f-wal" "$f-shm"
start_agent n1
wait "$W"
wait_until 20 curl -fsS "$AGENT_URL_n1/healthz" >/dev/null
out=$(SEED=15 node "$WORKLOAD" "$URL" "$TOK" 5)
is "primary whose WAL was lost takes writes again" 5 "$(jq .ok <<<"$out")" || { echo "# $out"; show_logs; }
check_copies r1 "primary's WAL lost"
for n in n1 n2 n3; do
    is "$n holds every write acknowledged before the WAL was lost" 0 "$(missing_acked $n r1)"
done

# --- 4. snapshot bootstrap once the log no longer has the replica's TXID -------
stop_daemon agent-n3
out=$(SEED=19 node "$WORKLOAD" "$URL" "$TOK" 600)
is "workload while n3 is down" 600 "$(jq .ok <<<"$out")" || echo "# $out"
start_agent n3
wait_until 20 curl -fsS "$AGENT_URL_n3/healthz" >/dev/null
check_copies r1 "after log compaction"
like "n3 caught up through a snapshot (log compacted past its TXID)" '^[1-9]' \
    "$(metric n3 shoal_agent_repl_snapshots_installed_total)"

# --- 5. a divergent replica is detected and repaired ----------------------------
stop_daemon agent-n2
"$DBTOOL" exec "$(db_of n2 r1)" "UPDATE acct SET bal = bal + 1; UPDATE blobs SET b = x'00' WHERE id = (SELECT max(id) FROM blobs)"
start_agent n2
wait_until 20 curl -fsS "$AGENT_URL_n2/healthz" >/dev/null
out=$(SEED=23 node "$WORKLOAD" "$URL" "$TOK" 300)
is "workload after n2 diverged" 300 "$(jq .ok <<<"$out")" || echo "# $out"
check_copies r1 "divergent replica"
like "n2 counted the checksum mismatch" '^[1-9]' "$(metric n2 shoal_agent_repl_checksum_mismatches_total)"
like "n2 repaired itself from a snapshot" '^[1-9]' "$(metric n2 shoal_agent_repl_snapshots_installed_total)"
is "n2's accounts hold the primary's total again" "100000" \
    "$("$DBTOOL" query "$(db_of n2 r1)" "SELECT sum(bal) FROM acct")"

# --- 6. quorum durability ------------------------------------------------------------
r=$(admin POST /v1/tenants '{"id":"q1","region":"ams","replicas":2,"durability":"quorum"}')
is "quorum tenant created" 201 "$(status_of "$r")"
r=$(admin POST /v1/tenants '{"id":"a1","region":"ams","replicas":2,"durability":"async"}')
is "async tenant created" 201 "$(status_of "$r")"
QTOK=$(token_for q1); ATOK=$(token_for a1)
sql() { # URL TOKEN SQL -> "STATUS BODY"
    curl -sS -o "$T_DIR/sql.out" -w '%{http_code}' -H "Authorization: Bearer $2" -H 'content-type: application/json' \
        --data-binary "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"$3\"}},{\"type\":\"close\"}]}" "$1/v2/pipeline"
    printf ' %s' "$(cat "$T_DIR/sql.out")"
}
wait_until 10 in_step q1
r=$(sql "$AGENT_URL_n1/t/q1" "$QTOK" "CREATE TABLE t(x)")
is "quorum write with replicas up is acknowledged" 200 "$(status_of "$r")"
kill -STOP "$PID_agent_n2" "$PID_agent_n3"
start=$(date +%s%N)
r=$(sql "$AGENT_URL_n1/t/q1" "$QTOK" "INSERT INTO t VALUES (1)")
took=$(( ($(date +%s%N) - start) / 1000000 ))
is "quorum write with no replica reachable fails" 503 "$(status_of "$r")"
is "... with the quorum_timeout error code" quorum_timeout "$(body_of "$r" | jq -r .error.code)"
like "... after waiting for the quorum timeout (${took} ms)" '^(1[5-9][0-9][0-9]|[2-4][0-9][0-9][0-9])$' "$took"
r=$(sql "$AGENT_URL_n1/t/a1" "$ATOK" "CREATE TABLE t(x)")
is "async write with no replica reachable is acknowledged" 200 "$(status_of "$r")"
kill -CONT "$PID_agent_n2" "$PID_agent_n3"
r=$(sql "$AGENT_URL_n1/t/q1" "$QTOK" "INSERT INTO t VALUES (2)")
is "quorum write once replicas are back is acknowledged" 200 "$(status_of "$r")"
wait_until 10 in_step q1
is "the timed-out quorum write is committed on the primary and replicated" "1,2" \
    "$("$DBTOOL" query "$(db_of n2 q1)" "SELECT group_concat(x) FROM (SELECT x FROM t ORDER BY x)")"

# --- 7. reads on replicas, read-your-writes ---------------------------------------
# hreq URL TOKEN BODY [HEADER...]: prints "STATUS" and leaves headers/body in files
hreq() {
    local url=$1 tok=$2 body=$3; shift 3
    local extra=() h
    for h in "$@"; do extra+=(-H "$h"); done
    curl -sS -D "$T_DIR/h.out" -o "$T_DIR/b.out" -w '%{http_code}' -H "Authorization: Bearer $tok" \
        -H 'content-type: application/json' "${extra[@]}" --data-binary "$body" "$url/v2/pipeline"
}
hdr() { awk -v n="$1" 'BEGIN {IGNORECASE=1} { split($0, kv, ": "); if (tolower(kv[1]) == n) { sub(/\r$/, "", kv[2]); print kv[2] } }' "$T_DIR/h.out"; }
q() { printf '{"requests":[{"type":"execute","stmt":{"sql":"%s"}},{"type":"close"}]}' "$1"; }
wait_until 10 in_step r1
fwd_before=$(metric n2 shoal_agent_forwarded_total)
is "replica read: 200" 200 "$(hreq "$AGENT_URL_n2/t/r1" "$TOK" "$(q 'SELECT sum(bal) FROM acct')")"
is "replica read: the replica's own data" '"100000"' "$(jq -c '.results[0].response.result.rows[0][0].value' "$T_DIR/b.out")"
is "replica read: shoal-txid is the replica's position" "$(positions r1 | awk '$1=="n2" {print $2}')" "$(hdr shoal-txid)"
is "replica read: answered locally, not forwarded" "$fwd_before" "$(metric n2 shoal_agent_forwarded_total)"
is "write sent to a replica is forwarded to the primary: 200" 200 \
    "$(hreq "$AGENT_URL_n2/t/r1" "$TOK" "$(q 'INSERT INTO ledger(n) VALUES (900000001)')")"
wtxid=$(hdr shoal-txid)
like "forwarded write: shoal-txid relayed from the primary" '^[0-9a-f]{16}$' "$wtxid"
like "forwarded write: the cookie for browsers" "^__shoal_txid=$wtxid; Path=/t/r1/" "$(hdr set-cookie)"
is "write with shoal-accept-replay on a replica: fly-replay to the primary" "instance=n1" \
    "$(hreq "$AGENT_URL_n2/t/r1" "$TOK" "$(q 'INSERT INTO ledger(n) VALUES (900000002)')" 'shoal-accept-replay: 1' >/dev/null; hdr fly-replay)"
is "read with shoal-accept-replay on a replica is still answered there" "" \
    "$(hreq "$AGENT_URL_n2/t/r1" "$TOK" "$(q 'SELECT 1')" 'shoal-accept-replay: 1' >/dev/null; hdr fly-replay)"
is "interactive transaction on a replica runs on the primary (baton from n1)" "n1" \
    "$(hreq "$AGENT_URL_n2/t/r1" "$TOK" '{"requests":[{"type":"execute","stmt":{"sql":"BEGIN"}}]}' >/dev/null; jq -r '.baton | split(".")[0]' "$T_DIR/b.out")"
is "malformed shoal-min-txid: 400" 400 "$(hreq "$AGENT_URL_n2/t/r1" "$TOK" "$(q 'SELECT 1')" 'shoal-min-txid: 12zz')"
is "malformed shoal-min-txid: JSON error body" invalid_request "$(jq -r .error.code "$T_DIR/b.out")"
# read-your-writes through a replica while another writer loads the primary
SEED=41 node "$WORKLOAD" "$URL" "$TOK" 100000 >/dev/null 2>&1 &
LOAD=$!
misses=0; waited=0
for i in $(seq 1 40); do
    hreq "$URL" "$TOK" "$(q "INSERT INTO ledger(n) VALUES ($((910000000 + i)))")" >/dev/null
    t=$(hdr shoal-txid)
    if [ $((i % 2)) = 0 ]; then h="shoal-min-txid: $t"; else h="cookie: a=b; __shoal_txid=$t"; fi
    hreq "$AGENT_URL_n2/t/r1" "$TOK" "$(q "SELECT count(*) FROM ledger WHERE n = $((910000000 + i))")" "$h" >/dev/null
    [ "$(jq -r '.results[0].response.result.rows[0][0].value' "$T_DIR/b.out")" = 1 ] || misses=$((misses + 1))
done
kill "$LOAD" 2>/dev/null; wait "$LOAD" 2>/dev/null
is "read-your-writes through a replica under load: 40 of 40 writes seen" 0 "$misses"
start=$(date +%s%N)
st=$(hreq "$AGENT_URL_n2/t/r1" "$TOK" "$(q 'SELECT count(*) FROM acct')" 'shoal-min-txid: 7fffffffffffffff')
took=$(( ($(date +%s%N) - start) / 1000000 ))
is "a TXID the replica cannot reach: the primary answers after --catchup-timeout" "200 100" \
    "$st $(jq -r '.results[0].response.result.rows[0][0].value' "$T_DIR/b.out")"
like "... having waited the catch-up timeout (${took} ms)" '^([7-9][0-9][0-9]|[1-2][0-9][0-9][0-9])$' "$took"
is "shoal-consistency: primary is answered by the primary" "$(positions r1 | awk '$1=="n1" {print $2}')" \
    "$(hreq "$AGENT_URL_n2/t/r1" "$TOK" "$(q 'SELECT 1')" 'shoal-consistency: primary' >/dev/null; hdr shoal-txid)"

# --- positions in the admin API and health ----------------------------------------
admin GET /v1/tenants/r1 >/dev/null
like "show: txid is 16 hex digits" '^[0-9a-f]{16}$' "$(jq -r '.instances[0].txid' "$T_DIR/body")"
is "show: replicas report lag 0 when caught up" "0,0" "$(jq -r '[.instances[] | select(.role=="replica") | .lag_ms] | join(",")' "$T_DIR/body")"
is "agent healthz: no lagging tenant" "[]" "$(curl -sS "$AGENT_URL_n2/healthz" | jq -c .lagging)"

done_testing
