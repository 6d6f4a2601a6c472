#!/usr/bin/env bash
# tests/integration/handover/handover.sh BUILD SRC: planned handover of a
# tenant's primary with real etcd and agents, under a steady write load
# whose acknowledged writes are kept in a ledger and checked afterwards.
BUILD=$1 SRC=$2
. "$SRC/tests/integration/lib/cluster.sh"
WORKLOAD=$SRC/tests/integration/replication/workload.mjs
AGENT_FLAGS="--pull-wait-ms 500"
start_cluster 5
CTL=("$BUILD/orchestrator/shoalctl" --url "$ORCH_URL" --token "$ADMIN_TOKEN")

holder() { admin GET "/v1/tenants/$1" >/dev/null; jq -r .primary.node "$T_DIR/body"; }

r=$(admin POST /v1/tenants '{"id":"h1","region":"ams","replicas":2}')
is "tenant h1 created (primary n1)" "201 n1" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
admin POST /v1/tenants/h1/tokens '{"access":"rw","ttl_s":3600}' >/dev/null
TOK=$(jq -r .token "$T_DIR/body")
node "$WORKLOAD" "$ROUTER_URL/t/h1" "$TOK" 1 >/dev/null
wait_until 10 in_step h1

# --- the contract's shape, and hostile input ---------------------------------
r=$(curl -sS -o "$T_DIR/b" -w '%{http_code}' -X POST --data-binary '{"to_node":"n2"}' "$ORCH_URL/v1/tenants/h1/handover")
is "handover without the admin token: 401" 401 "$r"
r=$(admin POST /v1/tenants/h1/handover '{"to_node":"n2","to_region":"iad"}')
is "both to_node and to_region: 400 with a JSON error" "400 invalid_request" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin POST /v1/tenants/h1/handover '{"to_node":"n2","extra":1}')
is "an unknown field: 400" 400 "$(status_of "$r")"
r=$(admin POST /v1/tenants/h1/handover '{"to_node":')
is "bad JSON: 400 invalid_json" "400 invalid_json" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin POST /v1/tenants/h1/handover '{"to_node":"../x"}')
is "a hostile node name: 400" 400 "$(status_of "$r")"
r=$(admin POST /v1/tenants/nope/handover '{"to_node":"n2"}')
is "an unknown tenant: 404 tenant_not_found" "404 tenant_not_found" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin POST /v1/tenants/h1/handover '{"to_node":"n1"}')
is "to the node that already is primary: 409" 409 "$(status_of "$r")"
r=$(admin POST /v1/tenants/h1/handover '{"to_region":"gru"}')
is "to a region without a replica: 409 saying so" "409 no replica" "$(status_of "$r") $(body_of "$r" | jq -r .error.message | grep -o 'no replica')"
r=$(admin GET /v1/operations/op-nothing)
is "an unknown operation: 404 operation_not_found" "404 operation_not_found" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"

# --- a lagging or unreachable target: refused, the primary keeps serving -------
kill -STOP "$PID_agent_n3"
r=$(admin POST /v1/tenants/h1/handover '{"to_node":"n3"}')
is "handover to a stopped node: 202 with a running operation" "202 running" "$(status_of "$r") $(body_of "$r" | jq -r .state)"
OP=$(body_of "$r" | jq -r .id)
r=$(admin POST /v1/tenants/h1/handover '{"to_node":"n2"}')
is "a second concurrent handover of the same tenant: 409" 409 "$(status_of "$r")"
done_op() { admin GET "/v1/operations/$OP" >/dev/null; jq -e '.state != "running"' "$T_DIR/body"; }
wait_until 20 done_op
is "the handover to the stopped node fails" failed "$(jq -r .state "$T_DIR/body")"
like "... saying why" "lagging|did not reach" "$(jq -r .error "$T_DIR/body")"
kill -CONT "$PID_agent_n3"
is "the old primary still holds the tenant" n1 "$(holder h1)"
out=$(SEED=3 node "$WORKLOAD" "$ROUTER_URL/t/h1" "$TOK" 20)
is "and takes writes" 20 "$(jq .ok <<<"$out")" || echo "# $out"

# --- 30 handovers under a steady write load ----------------------------------
: >"$T_DIR/ledger"
SEED=5 CONC=4 TOLERATE_ERRORS=1 node "$WORKLOAD" "$AGENT_URL_n2/t/h1" "$TOK" 1000000 "$T_DIR/ledger" >"$T_DIR/w.out" &
W=$!
sleep 0.5
failed_ops=0; stalls=()
for i in $(seq 1 30); do
    case $((i % 3)) in 1) to=n2 ;; 2) to=n3 ;; 0) to=n1 ;; esac
    r=$(admin POST "/v1/tenants/h1/handover?wait=1" "{\"to_node\":\"$to\"}")
    if [ "$(body_of "$r" | jq -r .state)" = done ]; then stalls+=("$(body_of "$r" | jq -r .stall_ms)")
    else failed_ops=$((failed_ops + 1)); echo "# handover $i: $(body_of "$r")"; fi
done
kill -TERM "$W"; wait "$W" 2>/dev/null
is "30 handovers in a row under writes all finish" 0 "$failed_ops"
is "the last one left the primary on n1" n1 "$(holder h1)"
acked=$(wc -l <"$T_DIR/ledger")
like "writes were acknowledged throughout ($acked)" '^[1-9][0-9]{2,}$' "$acked"
sorted=$(printf '%s\n' "${stalls[@]}" | sort -n)
echo "# write stall per handover (ms): p50 $(sed -n "$(( (${#stalls[@]} + 1) / 2 ))p" <<<"$sorted") max $(tail -1 <<<"$sorted")"
if wait_until 20 in_step h1; then ok "every instance reaches one position afterwards"
else not_ok "every instance reaches one position afterwards" "$(cat "$T_DIR/body")"; fi
for n in n1 n2 n3; do
    is "$n holds every acknowledged write" 0 "$(missing_acked $n h1)"
done
is "n3's file recomputes to the primary's checksum" "$(jq -r '.instances[0].checksum' "$T_DIR/body")" \
    "$("$DBTOOL" checksum "$(db_of n3 h1)" | cut -d' ' -f1)"

# --- shoalctl ---------------------------------------------------------------------
out=$("${CTL[@]}" handover h1 --to-region sin 2>&1); rc=$?
is "shoalctl handover exits 0" 0 "$rc"
like "shoalctl shows the steps" "fence.*confirm.*lease moved.*promoted" "$(tr '\n' ' ' <<<"$out")"
like "shoalctl ends with the stall and the final txid" "stall [0-9]+ ms, final txid [0-9a-f]{16}" "$(tail -1 <<<"$out")"
is "the tenant's region follows its primary" "sin n3" "$(admin GET /v1/tenants/h1 >/dev/null; jq -r '"\(.region) \(.primary.node)"' "$T_DIR/body")"
out=$("${CTL[@]}" handover h1 --to-node n3 2>&1); rc=$?
is "shoalctl handover to the current primary exits 1" 1 "$rc"

# --- drain: every primary leaves a node ----------------------------------------
for i in 1 2 3; do admin POST /v1/tenants "{\"id\":\"d$i\",\"region\":\"ams\",\"replicas\":2}" >/dev/null; done
on_n1=$(admin GET "/v1/tenants?limit=1000" >/dev/null; jq '[.tenants[] | select(.primary.node == "n1")] | length' "$T_DIR/body")
like "n1 leads some tenants before the drain ($on_n1)" '^[1-9]' "$on_n1"
r=$(admin POST /v1/nodes/n9/drain)
is "draining an unknown node: 404 node_not_found" "404 node_not_found" "$(status_of "$r") $(body_of "$r" | jq -r .error.code)"
r=$(admin POST "/v1/nodes/n1/drain?wait=1")
is "drain of n1 finishes" "200 drain done" "$(status_of "$r") $(body_of "$r" | jq -r '"\(.kind) \(.state)"')"
is "... having moved every primary it led" "$on_n1 $on_n1 0" "$(body_of "$r" | jq -r '"\(.total) \(.moved) \(.failed)"')"
is "no tenant is led by n1 any more" 0 \
    "$(admin GET "/v1/tenants?limit=1000" >/dev/null; jq '[.tenants[] | select(.primary.node == "n1")] | length' "$T_DIR/body")"
out=$("${CTL[@]}" nodes drain n2 2>&1); rc=$?
is "shoalctl nodes drain exits 0" 0 "$rc"
like "shoalctl nodes drain names the operation" "op-[0-9a-f]+" "$out"

# --- a tenant never used: no files anywhere, handed over, then written ----------
r=$(admin POST /v1/tenants '{"id":"u1","region":"sin","replicas":2}')
is "tenant u1 created (primary n3)" "201 n3" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
is "a new tenant has no files on any node" "" "$(find "$T_DIR/data" -name 'u1.db*' -o -name 'u1.db-log' | tr '\n' ' ')"
wait_until 10 in_step u1
is "every instance stands at txid 0 with one checksum" "0000000000000000" "$(jq -r '.instances[0].txid' "$T_DIR/body")"
r=$(admin POST "/v1/tenants/u1/handover?wait=1" '{"to_node":"n1"}')
is "handover of the unused tenant finishes" done "$(body_of "$r" | jq -r .state)"
admin POST /v1/tenants/u1/tokens '{"access":"rw","ttl_s":600}' >/dev/null
UT=$(jq -r .token "$T_DIR/body")
r=$(pipeline "$ROUTER_URL/t/u1/v2/pipeline" "$UT" '{"requests":[{"type":"execute","stmt":{"sql":"create table t(x)"}},{"type":"execute","stmt":{"sql":"insert into t values (1),(2)"}},{"type":"close"}]}')
is "its first write, on the new primary n1" "200 2" "$(status_of "$r") $(body_of "$r" | jq -r '.results[1].response.result.affected_row_count')"
if wait_until 10 in_step u1; then ok "both replicas are born from records and reach the primary's txid and checksum"
else not_ok "both replicas are born from records and reach the primary's txid and checksum" "$(cat "$T_DIR/body")"; fi
is "each node now has the database" 3 "$(find "$T_DIR/data" -name 'u1.db' | wc -l)"

# --- the fence against writes from every event loop -----------------------------
# A fence answers with the final position: no write may commit after it until
# the fence is lifted, whichever of the agent's loops took the write (a write
# that checked for a fence on one loop while another loop fenced once slipped
# past it). 16 writers on n3 directly; 150 fences, each checked 20 ms later.
r=$(admin POST /v1/tenants '{"id":"fz","region":"sin","replicas":0}')
is "tenant fz created (primary n3)" "201 n3" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
admin POST /v1/tenants/fz/tokens '{"access":"rw","ttl_s":600}' >/dev/null
FT=$(jq -r .token "$T_DIR/body")
echo "$FT" >"$T_DIR/fz.tokens"
r=$(pipeline "$AGENT_URL_n3/t/fz/v2/pipeline" "$FT" '{"requests":[{"type":"execute","stmt":{"sql":"create table w(x)"}},{"type":"close"}]}')
is "fz has its table" 200 "$(status_of "$r")"
ITOK=$(cat "$T_DIR/secrets/internal.token")
"$BUILD/tests/loadgen" -c 16 -d 12 -k "$T_DIR/fz.tokens" "$AGENT_URL_n3/t/fz/v2/pipeline" \
    '{"requests":[{"type":"execute","stmt":{"sql":"insert into w values (1)"}},{"type":"close"}]}' >"$T_DIR/fz.load" &
LOAD=$!
T_PIDS+=($LOAD)
sleep 0.5
moved=0 fenced=0
for i in $(seq 1 150); do
    f=$(curl -sS -m 10 -X POST -H "Authorization: Bearer $ITOK" -H 'content-type: application/json' \
        --data-binary '{"ttl_ms":3000}' "$AGENT_URL_n3/internal/tenants/fz/fence" | jq -r .txid)
    sleep 0.02
    p=$(curl -sS -m 10 -H "Authorization: Bearer $FT" "$AGENT_URL_n3/internal/tenants/fz" | jq -r .txid)
    curl -sS -m 10 -o /dev/null -X DELETE -H "Authorization: Bearer $ITOK" "$AGENT_URL_n3/internal/tenants/fz/fence"
    [ "$f" != null ] && [ -n "$f" ] && fenced=$((fenced + 1))
    [ "$f" != "$p" ] && { moved=$((moved + 1)); echo "# fence $i: reported $f, position 20 ms later $p"; }
done
wait "$LOAD"
is "150 fences answered with a position" 150 "$fenced"
is "no write committed past a fence while it held" 0 "$moved"
like "the writers kept writing between fences" '"ok":[1-9][0-9]{2,}' "$(cat "$T_DIR/fz.load")"

done_testing
