#!/usr/bin/env bash
# tests/integration/faults/faults.sh BUILD SRC: faults in the middle of a
# planned handover and an etcd outage, with real etcd and daemons, under a
# write load whose acknowledged writes are kept in a ledger. Failpoints
# (api/failpoint.h) stop the orchestrator at an exact step so the kill lands
# where the test says, not where timing happens to put it.
#   - the orchestrator killed after the fence: the fence expires, the old
#     primary resumes
#   - the orchestrator killed after the lease moved: the target promotes
#     itself, the old primary follows it
#   - the target killed before the lease moved: the handover aborts
#   - the target killed after the lease moved: failover to a replica
#   - etcd stopped under load: reads go on, writes stop once the session
#     could have expired, and resume when etcd is back
# After each: exactly one agent is primary, and every acknowledged write is
# on it.
BUILD=$1 SRC=$2
. "$SRC/tests/integration/lib/cluster.sh"
WORKLOAD=$SRC/tests/integration/replication/workload.mjs
AGENT_FLAGS="--pull-wait-ms 300"
FAILPOINTS_n1=capture-error-k6=error # tenant k6's database turns unhealthy on n1 (section 6)
TTL=3
start_cluster $TTL

# roles TENANT: "n1:primary n2:replica n3:replica", as each agent sees itself
roles() {
    local n url out=()
    for n in n1 n2 n3; do
        url=AGENT_URL_$n
        out+=("$n:$(curl -sS -m 2 -H "Authorization: Bearer $RO" "${!url}/internal/tenants/$1" | jq -r '.role // "down"' 2>/dev/null || echo down)")
    done
    echo "${out[*]}"
}
primaries() { roles "$1" | tr ' ' '\n' | grep -c ':primary$'; }
one_primary_on() { [ "$(roles "$1" | tr ' ' '\n' | grep ':primary$')" = "$2:primary" ]; }
# a write straight to an agent, without following replays or forwards
write_ok() {
    local url=AGENT_URL_$1
    pipeline "${!url}/t/$2/v2/pipeline" "$TOK" '{"requests":[{"type":"execute","stmt":{"sql":"CREATE TABLE IF NOT EXISTS probe(x)"}},{"type":"execute","stmt":{"sql":"INSERT INTO probe VALUES (1)"}}]}' >/dev/null
    [ "$(jq -r '[.results[].type] | unique | join(",")' "$T_DIR/pbody")" = ok ]
}
orch_log_has() { grep -q "failpoint hit name=$1" "$T_DIR/orchestrator.log"; }
op_state() { admin GET "/v1/operations/$1" >/dev/null; jq -r .state "$T_DIR/body"; }
op_over() { [ "$(op_state "$1")" != running ]; }

# new_tenant ID: created with its primary on n1 (ams), a token in $TOK
new_tenant() {
    local r
    r=$(admin POST /v1/tenants "{\"id\":\"$1\",\"region\":\"ams\",\"replicas\":2}")
    is "tenant $1 created on n1" "201 n1" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
    admin POST "/v1/tenants/$1/tokens" '{"access":"rw","ttl_s":3600}' >/dev/null
    TOK=$(jq -r .token "$T_DIR/body")
    RO=$TOK
    node "$WORKLOAD" "$ROUTER_URL/t/$1" "$TOK" 1 >/dev/null
    wait_until 10 in_step "$1"
}
# load_start ID SEED: a ledger-keeping write load through the router
load_start() {
    : >"$T_DIR/ledger_$1"
    SEED=$2 CONC=2 TOLERATE_ERRORS=1 node "$WORKLOAD" "$ROUTER_URL/t/$1" "$TOK" 1000000 "$T_DIR/ledger_$1" \
        >"$T_DIR/load_$1.out" 2>&1 &
    LOAD=$!
    sleep 0.7
}
load_stop() { kill -TERM "$LOAD" 2>/dev/null; wait "$LOAD" 2>/dev/null; }
# check_ledger ID NODE: every acknowledged write of ID's load is on NODE
check_ledger() {
    local acked; acked=$(wc -l <"$T_DIR/ledger_$1")
    like "$1: writes were acknowledged ($acked)" '^[1-9][0-9]*$' "$acked"
    cp "$T_DIR/ledger_$1" "$T_DIR/ledger"
    is "$1: $2 holds every acknowledged write" 0 "$(missing_acked "$2" "$1")"
    if wait_until 20 in_step "$1"; then ok "$1: every instance reaches one position"
    else not_ok "$1: every instance reaches one position" "$(cat "$T_DIR/body")"; fi
}
restart_orchestrator() { # with ORCH_FAILPOINTS as set by the caller
    start_orchestrator
    wait_until 20 curl -fsS "$ORCH_URL/healthz" || { echo "Bail out! the orchestrator did not restart"; show_logs; exit 1; }
    wait_until 10 sh -c "curl -fsS -H 'Authorization: Bearer $ADMIN_TOKEN' $ORCH_URL/v1/nodes | jq -e '.nodes | length == 3'"
}
kill_orchestrator() { kill -KILL "$PID_orchestrator"; wait "$PID_orchestrator" 2>/dev/null; }

# --- 1. the orchestrator dies after fencing the primary ------------------------------
kill_orchestrator; ORCH_FAILPOINTS=handover-after-fence=pause restart_orchestrator
new_tenant k1
load_start k1 11
r=$(admin POST /v1/tenants/k1/handover '{"to_node":"n2"}')
is "k1: handover to n2 started" 202 "$(status_of "$r")"
if wait_until 15 orch_log_has handover-after-fence; then ok "k1: the orchestrator fenced n1 and stopped there"
else not_ok "k1: the orchestrator fenced n1 and stopped there"; show_logs; fi
kill_orchestrator
is "k1: while fenced, n1 is still the only primary" "n1:primary n2:replica n3:replica" "$(roles k1)"
# the agent's fence expires (5 s) and, its lease key being its own, it resumes
if wait_until 15 write_ok n1 k1; then ok "k1: n1 takes writes again once the orphaned fence expires"
else not_ok "k1: n1 takes writes again once the orphaned fence expires" "$(cat "$T_DIR/pbody")"; fi
grep -q 'handover fence expired tenant=k1; resuming' "$T_DIR/agent-n1.log" && ok "k1: n1 logged the expired fence" \
    || not_ok "k1: n1 logged the expired fence"
sleep 0.5
load_stop
is "k1: one primary, n1" "n1:primary n2:replica n3:replica" "$(roles k1)"
ORCH_FAILPOINTS= restart_orchestrator
check_ledger k1 n1
grep -q 'failed' "$T_DIR/load_k1.out" && echo "# k1 load: $(tail -c 300 "$T_DIR/load_k1.out")"

# --- 2. the orchestrator dies after moving the lease ---------------------------------
kill_orchestrator; ORCH_FAILPOINTS=handover-after-move=pause restart_orchestrator
new_tenant k2
load_start k2 12
r=$(admin POST /v1/tenants/k2/handover '{"to_node":"n2"}')
is "k2: handover to n2 started" 202 "$(status_of "$r")"
if wait_until 15 orch_log_has handover-after-move; then ok "k2: the orchestrator moved the lease and stopped there"
else not_ok "k2: the orchestrator moved the lease and stopped there"; show_logs; fi
kill_orchestrator
# the agents finish it without the orchestrator: n2 takes the key, n1 follows
if wait_until 10 one_primary_on k2 n2; then ok "k2: n2 promoted itself, n1 stepped down: one primary"
else not_ok "k2: n2 promoted itself, n1 stepped down: one primary" "$(roles k2)"; fi
if wait_until 10 write_ok n2 k2; then ok "k2: n2 takes writes"; else not_ok "k2: n2 takes writes" "$(cat "$T_DIR/pbody")"; fi
sleep 0.5
load_stop
ORCH_FAILPOINTS= restart_orchestrator
admin GET /v1/tenants/k2 >/dev/null
is "k2: the restarted orchestrator reports n2 as primary" n2 "$(jq -r .primary.node "$T_DIR/body")"
check_ledger k2 n2

# --- 3. the target dies before the lease moves ---------------------------------------
kill_orchestrator; ORCH_FAILPOINTS=handover-after-fence=sleep:1500 restart_orchestrator
new_tenant k3
load_start k3 13
r=$(admin POST /v1/tenants/k3/handover '{"to_node":"n3"}')
OP=$(body_of "$r" | jq -r .id)
if wait_until 15 orch_log_has handover-after-fence; then ok "k3: the orchestrator fenced n1"
else not_ok "k3: the orchestrator fenced n1"; show_logs; fi
kill -KILL "$PID_agent_n3"; wait "$PID_agent_n3" 2>/dev/null
wait_until 20 op_over "$OP"
is "k3: the handover to the killed target fails" failed "$(op_state "$OP")"
like "k3: ... saying the target did not confirm" "did not reach" "$(jq -r .error "$T_DIR/body")"
if wait_until 5 write_ok n1 k3; then ok "k3: n1 lifted its fence and takes writes"
else not_ok "k3: n1 lifted its fence and takes writes" "$(cat "$T_DIR/pbody")"; fi
sleep 0.5
load_stop
start_agent n3
wait_until 20 curl -fsS "$AGENT_URL_n3/healthz"
wait_until 10 one_primary_on k3 n1
is "k3: one primary, n1" "n1:primary n2:replica n3:replica" "$(roles k3)"
check_ledger k3 n1

# --- 4. the target dies after the lease moved to it ----------------------------------
kill_orchestrator; ORCH_FAILPOINTS=handover-after-confirm=sleep:1500 restart_orchestrator
new_tenant k4
load_start k4 14
r=$(admin POST /v1/tenants/k4/handover '{"to_node":"n2"}')
OP=$(body_of "$r" | jq -r .id)
if wait_until 15 orch_log_has handover-after-confirm; then ok "k4: n2 confirmed the final position"
else not_ok "k4: n2 confirmed the final position"; show_logs; fi
kill -KILL "$PID_agent_n2"; wait "$PID_agent_n2" 2>/dev/null
wait_until 20 op_over "$OP"
is "k4: the handover fails: the dead target never took the lease" failed "$(op_state "$OP")"
# the record names a dead node: once its session expires, failover picks a replica
new_primary() {
    admin GET /v1/tenants/k4 >/dev/null
    jq -e '.primary.node != "n2" and ([.instances[] | select(.role == "primary" and .state == "serving")] | length == 1)' "$T_DIR/body"
}
if wait_until $((TTL + 10)) new_primary; then ok "k4: failover gave it a new primary ($(jq -r .primary.node "$T_DIR/body"))"
else not_ok "k4: failover gave it a new primary" "$(cat "$T_DIR/body")"; show_logs; fi
P4=$(jq -r .primary.node "$T_DIR/body")
if wait_until 10 write_ok "$P4" k4; then ok "k4: $P4 takes writes"; else not_ok "k4: $P4 takes writes" "$(cat "$T_DIR/pbody")"; fi
sleep 0.5
load_stop
is "k4: one primary among the live agents" "1" "$(primaries k4)"
start_agent n2
wait_until 20 curl -fsS "$AGENT_URL_n2/healthz"
check_ledger k4 "$P4"

# --- 5. etcd stopped and restarted under load ----------------------------------------
new_tenant k5
load_start k5 15
kill -TERM "$PID_etcd"; wait "$PID_etcd" 2>/dev/null
stopped_at=$(date +%s)
sleep $((TTL + 1))
# the session could have expired by now: no write may be acknowledged
pipeline "$AGENT_URL_n1/t/k5/v2/pipeline" "$TOK" '{"requests":[{"type":"execute","stmt":{"sql":"UPDATE acct SET bal = bal WHERE id = 1"}}]}' >/dev/null
is "k5: etcd down past the TTL: a write on the primary is refused" error "$(jq -r '.results[-1].type' "$T_DIR/pbody")"
like "k5: ... with a clear message" "read.?only|lease|session" "$(jq -r '.results[-1].error.message' "$T_DIR/pbody")"
r=$(pipeline "$AGENT_URL_n1/t/k5/v2/pipeline" "$TOK" '{"requests":[{"type":"execute","stmt":{"sql":"SELECT sum(bal) FROM acct"}}]}')
is "k5: reads go on on the primary" 100000 "$(body_of "$r" | jq -r '.results[0].response.result.rows[0][0].value')"
r=$(pipeline "$AGENT_URL_n2/t/k5/v2/pipeline" "$TOK" '{"requests":[{"type":"execute","stmt":{"sql":"SELECT sum(bal) FROM acct"}}]}')
is "k5: and on a replica" 100000 "$(body_of "$r" | jq -r '.results[0].response.result.rows[0][0].value')"
start_etcd
if wait_until 20 write_ok n1 k5; then ok "k5: writes resume on n1 once etcd is back ($(( $(date +%s) - stopped_at )) s after it stopped)"
else not_ok "k5: writes resume on n1 once etcd is back" "$(cat "$T_DIR/pbody")"; show_logs; fi
sleep 1
load_stop
is "k5: one primary, n1" "n1:primary n2:replica n3:replica" "$(roles k5)"
check_ledger k5 n1
for t in k1 k2 k3 k4; do
    is "$t: still exactly one primary after the etcd restart" 1 "$(RO=$(admin POST "/v1/tenants/$t/tokens" '{"access":"ro","ttl_s":600}' >/dev/null; jq -r .token "$T_DIR/body") primaries $t)"
done

# --- 6. one tenant's database turns unhealthy on its primary -----------------------
# n1's capture of k6 fails (failpoint): n1 refuses the write, gives up k6's lease
# and only k6's; failover names a replica; n1's other tenants stay where they are.
r=$(admin POST /v1/tenants '{"id":"k6","region":"ams","replicas":2}')
is "tenant k6 created on n1" "201 n1" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
admin POST /v1/tenants/k6/tokens '{"access":"rw","ttl_s":3600}' >/dev/null
TOK=$(jq -r .token "$T_DIR/body"); RO=$TOK
neighbours_before=$(for t in k1 k3 k5; do primary_of_t=$(admin GET "/v1/tenants/$t" >/dev/null; jq -r .primary.node "$T_DIR/body"); printf '%s ' "$primary_of_t"; done)
r=$(pipeline "$AGENT_URL_n1/t/k6/v2/pipeline" "$TOK" '{"requests":[{"type":"execute","stmt":{"sql":"CREATE TABLE broken_here(x)"}}]}')
like "k6: the write whose capture failed is refused, not acknowledged" "capture failed" "$(body_of "$r")"
k6_moved() { admin GET /v1/tenants/k6 >/dev/null; jq -e '.primary.node != "n1" and ([.instances[] | select(.role == "primary" and .state == "serving")] | length == 1)' "$T_DIR/body"; }
if wait_until $((TTL + 10)) k6_moved; then ok "k6: failover named another primary ($(jq -r .primary.node "$T_DIR/body"))"
else not_ok "k6: failover named another primary" "$(cat "$T_DIR/body")"; show_logs; fi
is "k6: the failover is shown on the tenant, from n1" n1 "$(jq -r .last_failover.from "$T_DIR/body")"
grep -q 'lease released tenant=k6: its database is unhealthy here' "$T_DIR/agent-n1.log" && ok "k6: n1 logged why it let the lease go" \
    || not_ok "k6: n1 logged why it let the lease go"
P6=$(jq -r .primary.node "$T_DIR/body")
if wait_until 10 write_ok "$P6" k6; then ok "k6: $P6 takes writes"; else not_ok "k6: $P6 takes writes" "$(cat "$T_DIR/pbody")"; fi
is "n1's other tenants keep their primaries (k1 k3 k5)" "$neighbours_before" \
    "$(for t in k1 k3 k5; do admin GET "/v1/tenants/$t" >/dev/null; printf '%s ' "$(jq -r .primary.node "$T_DIR/body")"; done)"
admin POST /v1/tenants/k1/tokens '{"access":"rw","ttl_s":600}' >/dev/null
TOK=$(jq -r .token "$T_DIR/body")
if write_ok "$(admin GET /v1/tenants/k1 >/dev/null; jq -r .primary.node "$T_DIR/body")" k1; then ok "k1 still takes writes on its primary"
else not_ok "k1 still takes writes on its primary" "$(cat "$T_DIR/pbody")"; fi

# --- 4. a create whose primary's session lease is gone ---------------------------------
# etcd refuses the whole born-leased txn (requested lease not found); the record is
# written alone and the primary acquires its key with a txn of its own
kill_orchestrator; ORCH_FAILPOINTS=create-lease-gone=error restart_orchestrator
adoptions() { curl -sS "$AGENT_URL_n2/metrics" | awk '$1 == "shoal_agent_lease_adoptions_total" {print $2}'; }
before=$(adoptions)
r=$(admin POST /v1/tenants '{"id":"kl","region":"iad","replicas":2}')
is "kl: created anyway, led by n2" "201 n2" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
grep -q 'failpoint hit name=create-lease-gone' "$T_DIR/orchestrator.log" && ok "kl: the create hit the failpoint" \
    || not_ok "kl: the create hit the failpoint"
lk=$(curl -sS -X POST "$ETCD_URL/v3/kv/range" --data "{\"key\":\"$(printf /shoal/leases/kl | base64 -w0)\"}")
rk=$(curl -sS -X POST "$ETCD_URL/v3/kv/range" --data "{\"key\":\"$(printf /shoal/tenants/kl | base64 -w0)\"}")
nk=$(curl -sS -X POST "$ETCD_URL/v3/kv/range" --data "{\"key\":\"$(printf /shoal/nodes/n2 | base64 -w0)\"}")
is "kl: n2 holds the key on its real session lease" "n2 $(jq -r '.kvs[0].lease' <<<"$nk")" \
    "$(jq -r '.kvs[0].value' <<<"$lk" | base64 -d | jq -r .holder) $(jq -r '.kvs[0].lease' <<<"$lk")"
[ "$(jq -r '.kvs[0].create_revision' <<<"$lk")" -gt "$(jq -r '.kvs[0].create_revision' <<<"$rk")" ] \
    && ok "kl: the key came after the record (acquired, not born with it)" \
    || not_ok "kl: the key came after the record (acquired, not born with it)" "$lk" "$rk"
is "kl: n2 adopted nothing" "$before" "$(adoptions)"
admin POST /v1/tenants/kl/tokens '{"access":"rw","ttl_s":600}' >/dev/null
TOK=$(jq -r .token "$T_DIR/body")
if write_ok n2 kl; then ok "kl: n2 takes writes"; else not_ok "kl: n2 takes writes" "$(cat "$T_DIR/pbody")"; fi
kill_orchestrator; ORCH_FAILPOINTS= restart_orchestrator

done_testing
