#!/usr/bin/env bash
# The walking skeleton, end to end with real etcd and daemons: create a tenant
# in iad, see its primary lease and replicas, get a token, run SQL through the
# router, directly on the primary and on a replica (forwarded), and check that
# hostile input gets the right status and a JSON error.
# usage: walking_skeleton.sh BUILD_DIR SOURCE_DIR
BUILD=$1 SRC=$2
. "$SRC/tests/integration/lib/cluster.sh"

start_cluster 5

# --- create ---------------------------------------------------------------
r=$(admin POST /v1/tenants '{"id":"acme","region":"iad"}')
is "create returns 201" 201 "$(status_of "$r")"
b=$(body_of "$r")
is "tenant id echoed" acme "$(jq -r .id <<<"$b")"
is "primary placed in iad (n2)" n2 "$(jq -r .primary.node <<<"$b")"
is "primary region iad" iad "$(jq -r .primary.region <<<"$b")"
like "primary epoch is a positive revision" '^[1-9][0-9]*$' "$(jq -r .primary.epoch <<<"$b")"
is "three instances (primary + 2 replicas)" 3 "$(jq '.instances | length' <<<"$b")"
is "replicas on the other two nodes" "n1,n3" "$(jq -r '[.instances[] | select(.role=="replica") | .node] | sort | join(",")' <<<"$b")"
is "defaults: auto placement, async durability, 2 replicas" "auto async 2" "$(jq -r '"\(.placement) \(.durability) \(.replicas)"' <<<"$b")"
epoch=$(jq -r .primary.epoch <<<"$b")

# The lease key lives in etcd, attached to n2's session lease, with the epoch as mod_revision.
key64=$(printf '/shoal/leases/acme' | base64 -w0)
kv=$(curl -sS -X POST "$ETCD_URL/v3/kv/range" --data "{\"key\":\"$key64\"}")
is "lease key mod_revision equals the epoch" "$epoch" "$(jq -r '.kvs[0].mod_revision' <<<"$kv")"
is "lease key names n2 as holder" n2 "$(jq -r '.kvs[0].value' <<<"$kv" | base64 -d | jq -r .holder)"
like "lease key is attached to a session lease" '^[1-9][0-9]*$' "$(jq -r '.kvs[0].lease' <<<"$kv")"
# Born leased: the create txn wrote the record and n2's lease key together,
# on n2's session lease (the one its node key is on), and n2 adopted it.
rec=$(curl -sS -X POST "$ETCD_URL/v3/kv/range" --data "{\"key\":\"$(printf '/shoal/tenants/acme' | base64 -w0)\"}")
node=$(curl -sS -X POST "$ETCD_URL/v3/kv/range" --data "{\"key\":\"$(printf '/shoal/nodes/n2' | base64 -w0)\"}")
is "lease key written by the create txn (same create_revision as the record)" \
   "$(jq -r '.kvs[0].create_revision' <<<"$rec")" "$(jq -r '.kvs[0].create_revision' <<<"$kv")"
is "lease key is on n2's session lease" "$(jq -r '.kvs[0].lease' <<<"$node")" "$(jq -r '.kvs[0].lease' <<<"$kv")"
is "n2 adopted the key (no acquire txn)" 1 \
   "$(curl -sS "$AGENT_URL_n2/metrics" | awk '$1 == "shoal_agent_lease_adoptions_total" {print $2}')"

r=$(admin POST /v1/tenants '{"id":"acme","region":"iad"}')
is "second create is 409" 409 "$(status_of "$r")"
is "409 code tenant_exists" tenant_exists "$(body_of "$r" | jq -r .error.code)"

# --- show -------------------------------------------------------------------
r=$(admin GET /v1/tenants/acme)
is "show returns 200" 200 "$(status_of "$r")"
b=$(body_of "$r")
is "show: primary serving" serving "$(jq -r '.instances[] | select(.role=="primary") | .state' <<<"$b")"
# replicas bootstrap from a snapshot of the new primary, then follow it
replicas_in_step() {
    admin GET /v1/tenants/acme >/dev/null
    jq -e '[.instances[] | [.txid, .checksum]] | (unique | length == 1) and (.[0][0] != null)' "$T_DIR/body"
}
if wait_until 10 replicas_in_step; then ok "show: both replicas reach the primary's txid and checksum"
else not_ok "show: both replicas reach the primary's txid and checksum" "$(cat "$T_DIR/body")"; fi
is "show: replicas follow" "following,following" \
   "$(jq -r '[.instances[] | select(.role=="replica") | .state] | join(",")' "$T_DIR/body")"
r=$(admin GET /v1/tenants)
is "list has the tenant" acme "$(body_of "$r" | jq -r '.tenants[0].id')"
is "list: no next cursor" null "$(body_of "$r" | jq -r '.next_cursor')"

# --- tokens and SQL -------------------------------------------------------------
r=$(admin POST /v1/tenants/acme/tokens '{"access":"rw","ttl_s":600}')
is "token issued" 201 "$(status_of "$r")"
TOKEN=$(body_of "$r" | jq -r .token)
like "token is a JWT" '^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$' "$TOKEN"
SELECT='{"requests":[{"type":"execute","stmt":{"sql":"select 40+2"}},{"type":"close"}]}'

r=$(pipeline "$ROUTER_URL/t/acme/v2/pipeline" "$TOKEN" "$SELECT")
is "router: pipeline 200" 200 "$(status_of "$r")"
is "router: select 40+2 is 42" '{"type":"integer","value":"42"}' "$(body_of "$r" | jq -c '.results[0].response.result.rows[0][0]')"
is "router: close acknowledged, baton null" 'close null' "$(body_of "$r" | jq -r '"\(.results[1].response.type) \(.baton)"')"

r=$(pipeline "$AGENT_URL_n2/t/acme/v2/pipeline" "$TOKEN" "$SELECT")
is "primary agent answers directly" 42 "$(body_of "$r" | jq -r '.results[0].response.result.rows[0][0].value')"
r=$(pipeline "$AGENT_URL_n1/t/acme/v3/pipeline" "$TOKEN" "$SELECT")
is "replica agent answers a read itself (v3)" 42 "$(body_of "$r" | jq -r '.results[0].response.result.rows[0][0].value')"

status=$(curl -sS -o /dev/null -D "$T_DIR/h" -w '%{http_code}' -X POST -H "Authorization: Bearer $TOKEN" \
    -H 'shoal-accept-replay: 1' --data-binary '{"requests":[{"type":"execute","stmt":{"sql":"create table replay_probe(x)"}},{"type":"close"}]}' \
    "$AGENT_URL_n3/t/acme/v2/pipeline")
is "replica with shoal-accept-replay answers a write with fly-replay" "instance=n2" \
   "$(tr -d '\r' <"$T_DIR/h" | sed -n 's/^fly-replay: //Ip')"

WRITE='{"requests":[{"type":"execute","stmt":{"sql":"create table t(id integer primary key, name text)"}},
 {"type":"execute","stmt":{"sql":"insert into t(name) values (?), (?)","args":[{"type":"text","value":"ann"},{"type":"text","value":"bob"}]}},
 {"type":"close"}]}'
r=$(pipeline "$ROUTER_URL/t/acme/v2/pipeline" "$TOKEN" "$WRITE")
is "write through the router: 2 rows affected" 2 "$(body_of "$r" | jq -r '.results[1].response.result.affected_row_count')"
r=$(pipeline "$ROUTER_URL/t/acme/v2/pipeline" "$TOKEN" '{"requests":[{"type":"execute","stmt":{"sql":"select name from t order by id"}},{"type":"close"}]}')
is "read back through the router" "ann,bob" "$(body_of "$r" | jq -r '[.results[0].response.result.rows[][0].value] | join(",")')"

r=$(admin POST /v1/tenants/acme/tokens '{"access":"ro"}')
RO=$(body_of "$r" | jq -r .token)
r=$(pipeline "$ROUTER_URL/t/acme/v2/pipeline" "$RO" '{"requests":[{"type":"execute","stmt":{"sql":"insert into t(name) values (1)"}},{"type":"close"}]}')
is "ro token cannot write (in-band SQLITE_AUTH saying why)" "SQLITE_AUTH SQLite error: not authorized (this token is read-only)" \
   "$(body_of "$r" | jq -r '.results[0].error.code + " " + .results[0].error.message')"
r=$(pipeline "$ROUTER_URL/t/acme/v2/pipeline" "$RO" "$SELECT")
is "ro token can read" 42 "$(body_of "$r" | jq -r '.results[0].response.result.rows[0][0].value')"

# shoalctl, as the README shows it
out=$(SHOAL_URL=$ORCH_URL SHOAL_TOKEN=$ADMIN_TOKEN SHOAL_ROUTER=$ROUTER_URL "$BUILD/orchestrator/shoalctl" sql acme "select 40+2")
like "shoalctl sql prints 42" '(^|[[:space:]])42([[:space:]]|$)' "$out"
ctl() { SHOAL_URL=$ORCH_URL SHOAL_TOKEN=$ADMIN_TOKEN SHOAL_ROUTER=$ROUTER_URL "$BUILD/orchestrator/shoalctl" "$@"; }
out=$(ctl sql acme "create table ms(a, b text); insert into ms values (7, 'x;y'); insert into ms values (8, ''); select sum(a) || ':' || group_concat(b, '') as s from ms" 2>&1)
like "shoalctl sql runs several statements and prints the last one's rows" '(^|[[:space:]])15:x;y([[:space:]]|$)' "$out"
out=$(ctl sql acme "insert into ms values (1, ''); select * from no_such_table; insert into ms values (100, '')" 2>&1); rc=$?
is "shoalctl sql stops at the first failing statement and exits 1" "1" "$rc"
like "... naming it" 'statement 2 of 3: .*no such table: no_such_table' "$out"
is "... after the first ran and before the third" "16" "$(ctl sql acme "select sum(a) from ms" | sed -n 2p | tr -d ' ')"
out=$(ctl sql acme "select ?; select ?" 1 2 2>&1); rc=$?
is "shoalctl sql refuses arguments for several statements (exit 2)" "2 shoalctl: arguments bind to one statement; the SQL has 2" "$rc $(echo "$out" | head -1)"

# --- hostile input: admin API ---------------------------------------------------
for bad in '../x' '' 'ACME' 'a.b' '-abc' 'abc-' 'ünï' "$(printf 'x%.0s' $(seq 300))" 'a/b' 'a b'; do
    body=$(jq -cn --arg id "$bad" '{id:$id}')
    r=$(admin POST /v1/tenants "$body")
    is "create rejects id '${bad:0:20}' with 400 invalid_tenant_id" "400 invalid_tenant_id" \
       "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
done
r=$(admin GET '/v1/tenants/..%2fx')
is "show rejects an encoded path in the id" "400 invalid_tenant_id" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin POST /v1/tenants '{"id":"x",')
is "broken JSON is 400 invalid_json" "400 invalid_json" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin POST /v1/tenants '[1,2]')
is "a JSON array is 400 invalid_json" "400 invalid_json" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin POST /v1/tenants '{"id":"ok1","replicas":"two"}')
is "a mistyped field is 400" "400 invalid_request" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin POST /v1/tenants '{"id":"ok1","regoin":"ams"}')
is "a misspelt field is 400, not ignored" "400 invalid_request" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin POST /v1/tenants '{"id":"ok1","region":"xyz"}')
is "an unknown region is 400" "400 invalid_request" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin POST /v1/tenants '{"id":"ok1","replicas":5}')
is "more replicas than nodes is 503 no_capacity" "503 no_capacity" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin GET /v1/tenants/nosuch)
is "unknown tenant is 404 tenant_not_found" "404 tenant_not_found" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin DELETE /v1/tenants)
is "wrong method is 405 with JSON" "405 method_not_allowed" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
s=$(curl -sS -o "$T_DIR/b" -w '%{http_code}' "$ORCH_URL/v1/tenants")
is "missing admin token is 401 JSON" "401 unauthorized" "$s $(jq -r .error.code <"$T_DIR/b")"
s=$(curl -sS -o "$T_DIR/b" -w '%{http_code}' -H 'Authorization: Bearer nope' "$ORCH_URL/v1/tenants")
is "wrong admin token is 401 JSON" "401 unauthorized" "$s $(jq -r .error.code <"$T_DIR/b")"
head -c 2000000 /dev/zero | tr '\0' 'a' >"$T_DIR/big"
s=$(curl -sS -o "$T_DIR/b" -w '%{http_code}' -X POST -H "Authorization: Bearer $ADMIN_TOKEN" --data-binary @"$T_DIR/big" "$ORCH_URL/v1/tenants")
is "an oversized body is 413" 413 "$s"

# --- hostile input: data plane ----------------------------------------------------
r=$(pipeline "$ROUTER_URL/t/acme/v2/pipeline" "" "$SELECT")
is "router: no token is 401 JSON" "401 unauthorized" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(pipeline "$AGENT_URL_n2/t/acme/v2/pipeline" "" "$SELECT")
is "agent: no token is 401 with Hrana-style message" "401 true" "$(status_of "$r") $(body_of "$r" | jq -r '.message | length > 0')"
r=$(pipeline "$ROUTER_URL/t/acme/v2/pipeline" "${TOKEN}x" "$SELECT")
is "tampered token is 401" 401 "$(status_of "$r")"
admin POST /v1/tenants '{"id":"other","region":"sin"}' >/dev/null
OTHER=$(admin POST /v1/tenants/other/tokens '{}' | cut -d' ' -f2- | jq -r .token)
r=$(pipeline "$AGENT_URL_n2/t/acme/v2/pipeline" "$OTHER" "$SELECT")
is "a token for another tenant is 403" "403 forbidden" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(pipeline "$AGENT_URL_n2/t/..%2fx/v2/pipeline" "$TOKEN" "$SELECT")
is "agent: bad tenant in the path is 400" "400 invalid_tenant_id" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(pipeline "$AGENT_URL_n2/t/acme/v2/pipeline" "$TOKEN" '{"requests":')
is "agent: broken pipeline JSON is 400" 400 "$(status_of "$r")"
r=$(pipeline "$AGENT_URL_n2/v2/pipeline" "$TOKEN" "$SELECT")
is "agent: tenant from the token claim when the path has none" 42 "$(body_of "$r" | jq -r '.results[0].response.result.rows[0][0].value')"

# /v3/cursor: newline-delimited entries, then the stream it opened is closed with its baton
CURSOR='{"baton":null,"batch":{"steps":[{"stmt":{"sql":"select name from t order by id"}},{"stmt":{"sql":"select nope"}},{"condition":{"type":"ok","step":1},"stmt":{"sql":"select 3"}}]}}'
s=$(curl -sS -o "$T_DIR/cursor" -w '%{http_code} %{content_type}' -X POST -H "Authorization: Bearer $TOKEN" --data-binary "$CURSOR" "$ROUTER_URL/t/acme/v3/cursor")
is "cursor: 200 text/plain" "200 text/plain" "$s"
is "cursor: entry types in order" "step_begin row row step_end step_error" "$(tail -n +2 "$T_DIR/cursor" | jq -r .type | tr '\n' ' ' | sed 's/ $//')"
is "cursor: rows carry values" "ann bob" "$(tail -n +2 "$T_DIR/cursor" | jq -r 'select(.type=="row") | .row[0].value' | tr '\n' ' ' | sed 's/ $//')"
cbaton=$(head -n1 "$T_DIR/cursor" | jq -r .baton)
like "cursor: first line carries a baton naming the node" '^n2\.' "$cbaton"
r=$(pipeline "$ROUTER_URL/t/acme/v3/pipeline" "$TOKEN" "$(jq -cn --arg b "$cbaton" '{baton:$b,requests:[{type:"close"}]}')")
is "cursor's stream closes through the router with its baton" "200 null" "$(status_of "$r") $(body_of "$r" | jq -r .baton)"
r=$(pipeline "$ROUTER_URL/t/acme/v3/pipeline" "$TOKEN" "$(jq -cn --arg b "$cbaton" '{baton:$b,requests:[{type:"close"}]}')")
is "a used baton is refused" "400 INVALID_BATON" "$(status_of "$r") $(body_of "$r" | jq -r .code)"

for sql in "ATTACH '/etc/passwd' AS p" "VACUUM INTO '/tmp/stolen.db'" "PRAGMA database_list" "PRAGMA journal_mode=DELETE" "select load_extension('/tmp/x')"; do
    body=$(jq -cn --arg s "$sql" '{requests:[{type:"execute",stmt:{sql:$s}},{type:"close"}]}')
    r=$(pipeline "$ROUTER_URL/t/acme/v2/pipeline" "$TOKEN" "$body")
    is "SQL cannot leave its tenant: ${sql:0:24}" "200 SQLITE_AUTH" "$(status_of "$r") $(body_of "$r" | jq -r '.results[0].error.code')"
done
[ ! -e /tmp/stolen.db ] && ok "VACUUM INTO wrote no file" || not_ok "VACUUM INTO wrote no file"

# --- reads in place (--inline-reads): on the agent's event loop, not a worker ------------
in_place() { curl -sS "$1/metrics" | awk -v m="shoal_agent_reads_in_place_$2" '$1 == m {print $2}'; }
# reads N URL: N point reads; prints how many answered 42
reads() {
    local n=0
    for _ in $(seq "$1"); do
        r=$(pipeline "$2" "$TOKEN" "$SELECT")
        [ "$(body_of "$r" | jq -r '.results[0].response.result.rows[0][0].value')" = 42 ] && n=$((n + 1))
    done
    echo "$n"
}
before=$(in_place "$AGENT_URL_n2" total)
is "primary: 20 reads answer 42" 20 "$(reads 20 "$AGENT_URL_n2/t/acme/v2/pipeline")"
ran=$(( $(in_place "$AGENT_URL_n2" total) - before ))
# one by one, the tenant's slot is idle for nearly all of them (a replication or
# housekeeping job on it sends a read to a worker instead)
if [ "$ran" -ge 10 ]; then ok "primary: reads ran in place ($ran of 20)"; else not_ok "primary: reads ran in place" "got $ran of 20"; fi
before=$(in_place "$AGENT_URL_n1" total)
is "replica: 20 reads answer 42" 20 "$(reads 20 "$AGENT_URL_n1/t/acme/v2/pipeline")"
ran=$(( $(in_place "$AGENT_URL_n1" total) - before ))
if [ "$ran" -ge 10 ]; then ok "replica: reads ran in place ($ran of 20)"; else not_ok "replica: reads ran in place" "got $ran of 20"; fi
before=$(in_place "$AGENT_URL_n2" total)
for i in 1 2 3; do
    pipeline "$AGENT_URL_n2/t/acme/v2/pipeline" "$TOKEN" "{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"insert into t(name) values ('ip$i')\"}},{\"type\":\"close\"}]}" >/dev/null
done
is "writes never run in place" "$before" "$(in_place "$AGENT_URL_n2" total)"
r=$(pipeline "$AGENT_URL_n2/t/acme/v2/pipeline" "$TOKEN" '{"requests":[{"type":"execute","stmt":{"sql":"select count(*) from t where name like '"'ip%'"'"}},{"type":"close"}]}')
is "the writes landed" 3 "$(body_of "$r" | jq -r '.results[0].response.result.rows[0][0].value')"
# A long read is stopped after its budget and run again by a worker: same answer.
LONG='{"requests":[{"type":"execute","stmt":{"sql":"with recursive c(x) as (select 1 union all select x+1 from c where x < 300000) select count(*), sum(x) from c"}},{"type":"close"}]}'
declined0=$(in_place "$AGENT_URL_n2" declined_total)
got=""
for _ in 1 2 3 4 5; do
    r=$(pipeline "$AGENT_URL_n2/t/acme/v2/pipeline" "$TOKEN" "$LONG")
    got="$got $(status_of "$r"):$(body_of "$r" | jq -r '.results[0].response.result.rows[0] | map(.value) | join(",")')"
    [ "$(in_place "$AGENT_URL_n2" declined_total)" -gt "$declined0" ] && break
done
like "a long read answers in full after being handed on" '^( 200:300000,45000150000)+$' "$got"
if [ "$(in_place "$AGENT_URL_n2" declined_total)" -gt "$declined0" ]; then ok "the long read was stopped in place (declined counted)"
else not_ok "the long read was stopped in place" "declined stayed at $declined0"; fi
# A failing read is answered by a worker with the usual error.
r=$(pipeline "$AGENT_URL_n2/t/acme/v2/pipeline" "$TOKEN" '{"requests":[{"type":"execute","stmt":{"sql":"select * from no_such_table"}},{"type":"close"}]}')
is "a failing read gets its Hrana error" "200 SQL_PARSE_ERROR" "$(status_of "$r") $(body_of "$r" | jq -r '.results[0].error.code')"
like "its message names the table" 'no such table: no_such_table' "$(body_of "$r" | jq -r '.results[0].error.message')"

# --- delete -----------------------------------------------------------------------
r=$(admin DELETE /v1/tenants/acme)
is "delete is 204" 204 "$(status_of "$r")"
r=$(admin GET /v1/tenants/acme)
is "deleted tenant is 404" 404 "$(status_of "$r")"
r=$(admin DELETE /v1/tenants/acme)
is "deleting again is 404" 404 "$(status_of "$r")"
if wait_until 10 sh -c "! find '$T_DIR/data' -name 'acme.db*' | grep -q ."; then ok "agents removed the tenant's files"
else not_ok "agents removed the tenant's files" "$(find "$T_DIR/data" -name 'acme.db*')"; fi
kv=$(curl -sS -X POST "$ETCD_URL/v3/kv/range" --data "{\"key\":\"$key64\"}")
is "lease key is gone" 0 "$(jq -r '.kvs | length' <<<"$kv")"

# --- a lease key left over (a holder that has not let go yet): the create txn
# cannot write the key, so it writes the record alone and n2 acquires the key
# with its own txn once the old one is gone
stale64=$(printf '/shoal/leases/stale' | base64 -w0)
curl -sS -X POST "$ETCD_URL/v3/kv/put" \
    --data "{\"key\":\"$stale64\",\"value\":\"$(printf '{"holder":"n9","url":"http://127.0.0.1:9"}' | base64 -w0)\"}" >/dev/null
( sleep 1; curl -sS -X POST "$ETCD_URL/v3/kv/deleterange" --data "{\"key\":\"$stale64\"}" >/dev/null ) &
deleter=$!
r=$(admin POST /v1/tenants '{"id":"stale","region":"iad"}')
wait "$deleter"
is "create over a left-over lease key is 201" 201 "$(status_of "$r")"
kv=$(curl -sS -X POST "$ETCD_URL/v3/kv/range" --data "{\"key\":\"$stale64\"}")
is "n2 acquired the key once the old one went" n2 "$(jq -r '.kvs[0].value' <<<"$kv" | base64 -d | jq -r .holder)"
is "create answered with n2's lease" "$(jq -r '.kvs[0].mod_revision' <<<"$kv")" "$(body_of "$r" | jq -r .primary.epoch)"
is "that key was acquired, not adopted" 1 \
   "$(curl -sS "$AGENT_URL_n2/metrics" | awk '$1 == "shoal_agent_lease_adoptions_total" {print $2}')"
r=$(admin POST /v1/tenants/stale/tokens '{"access":"rw","ttl_s":600}')
ST=$(body_of "$r" | jq -r .token)
r=$(pipeline "$ROUTER_URL/t/stale/v2/pipeline" "$ST" '{"requests":[{"type":"execute","stmt":{"sql":"create table t(x)"}},{"type":"execute","stmt":{"sql":"insert into t values (7)"}},{"type":"close"}]}')
is "that tenant takes writes" "200 1" "$(status_of "$r") $(body_of "$r" | jq -r '.results[1].response.result.affected_row_count')"

# --- health and metrics, then clean stops ---------------------------------------------
like "agent metrics are Prometheus text" 'shoal_agent_pipelines_total [0-9]+' "$(curl -sS "$AGENT_URL_n2/metrics")"
like "orchestrator metrics" 'shoal_orchestrator_tenants_created_total [0-9]+' "$(curl -sS "$ORCH_URL/metrics")"
for d in router agent-n1 agent-n2 agent-n3 orchestrator; do
    stop_daemon "$d"; is "$d exits 0 on SIGTERM" 0 "$?"
done
if [ "$TAP_FAILED" -ne 0 ]; then show_logs; fi
done_testing
