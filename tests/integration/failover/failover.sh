#!/usr/bin/env bash
# tests/integration/failover/failover.sh BUILD SRC: kill -9 of a primary's
# agent under writes; the orchestrator promotes the most caught-up replica;
# quorum tenants lose nothing acknowledged; the old primary rejoins.
BUILD=$1 SRC=$2
. "$SRC/tests/integration/lib/cluster.sh"
WORKLOAD=$SRC/tests/integration/replication/workload.mjs
AGENT_FLAGS="--pull-wait-ms 300"
ORCH_FLAGS="--leader-ttl 2"
TTL=2
start_cluster $TTL

holder() { admin GET "/v1/tenants/$1" >/dev/null; jq -r '.primary.node // "none"' "$T_DIR/body"; }
for spec in fa:async fq:quorum; do
    id=${spec%%:*}; dur=${spec##*:}
    r=$(admin POST /v1/tenants "{\"id\":\"$id\",\"region\":\"ams\",\"replicas\":2,\"durability\":\"$dur\"}")
    is "tenant $id ($dur) created on n1" "201 n1" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
    admin POST "/v1/tenants/$id/tokens" '{"access":"rw","ttl_s":3600}' >/dev/null
    eval "TOK_$id=$(jq -r .token "$T_DIR/body")"
    node "$WORKLOAD" "$ROUTER_URL/t/$id" "$(eval echo "\$TOK_$id")" 1 >/dev/null
    wait_until 10 in_step "$id"
done

: >"$T_DIR/ledger_fa"; : >"$T_DIR/ledger_fq"
SEED=3 CONC=2 TOLERATE_ERRORS=1 node "$WORKLOAD" "$ROUTER_URL/t/fa" "$TOK_fa" 1500 "$T_DIR/ledger_fa" >"$T_DIR/wa.out" &
WA=$!
SEED=4 CONC=2 TOLERATE_ERRORS=1 node "$WORKLOAD" "$ROUTER_URL/t/fq" "$TOK_fq" 1500 "$T_DIR/ledger_fq" >"$T_DIR/wq.out" &
WQ=$!
sleep 2
before=$(wc -l <"$T_DIR/ledger_fq")
killed_at=$(date +%s%N)
kill -KILL "$PID_agent_n1"; wait "$PID_agent_n1" 2>/dev/null
moved() { local h; h=$(holder fa); [ "$h" != n1 ] && [ "$h" != none ] && h=$(holder fq) && [ "$h" != n1 ] && [ "$h" != none ]; }
if wait_until $((TTL + 8)) moved; then
    took=$(( ($(date +%s%N) - killed_at) / 1000000 ))
    ok "both tenants have a new primary after kill -9 of n1 (${took} ms; lease TTL ${TTL} s)"
else
    not_ok "both tenants have a new primary after kill -9 of n1" "fa: $(holder fa), fq: $(holder fq)"; show_logs
fi
# how fast is ops/bench/failover's business (tests assert no wall-clock speed)
echo "# failover took ${took:-?} ms with a lease TTL of ${TTL} s"
wait "$WA" "$WQ"
after=$(wc -l <"$T_DIR/ledger_fq")
like "writes were acknowledged after the failover too ($before before, $after in all)" '^1$' "$([ "$after" -gt "$before" ] && echo 1)"

NEW=$(holder fq)
wait_until 20 in_step fq
is "quorum tenant: the new primary $NEW holds every acknowledged write" 0 \
    "$(cp "$T_DIR/ledger_fq" "$T_DIR/ledger"; missing_acked "$NEW" fq)"
admin GET /v1/tenants/fa >/dev/null
is "async tenant: the failover is shown on the tenant" "n1" "$(jq -r '.last_failover.from' "$T_DIR/body")"
lost=$(jq -r '.last_failover.lost_txids' "$T_DIR/body")
like "async tenant: the TXIDs lost are counted ($lost)" '^[0-9]+$' "$lost"
NEWA=$(holder fa)
missing=$(cp "$T_DIR/ledger_fa" "$T_DIR/ledger"; missing_acked "$NEWA" fa)
# lost_txids is what the replicas had heard of: a lower bound (async writes
# acknowledged after the last poll are invisible to them)
echo "# async tenant: $missing acknowledged write(s) missing on $NEWA, $lost counted as lost"
admin GET /v1/tenants/fq >/dev/null
is "quorum tenant: nothing lost" 0 "$(jq -r '.last_failover.lost_txids' "$T_DIR/body")"

# --- the deposed primary returns and rejoins as a replica ---------------------------
start_agent n1
wait_until 20 curl -fsS "$AGENT_URL_n1/healthz" >/dev/null
out=$(SEED=8 node "$WORKLOAD" "$ROUTER_URL/t/fa" "$TOK_fa" 20)
is "writes go on with n1 back" 20 "$(jq .ok <<<"$out")"
for id in fa fq; do
    if wait_until 20 in_step $id; then ok "$id: n1 rejoined and holds the new primary's position"
    else not_ok "$id: n1 rejoined and holds the new primary's position" "$(cat "$T_DIR/body")"; fi
    is "$id: n1 is a replica now" replica "$(jq -r '.instances[] | select(.node=="n1") | .role' "$T_DIR/body")"
    is "$id: n1's file recomputes to the primary's checksum" "$(jq -r '.instances[0].checksum' "$T_DIR/body")" \
        "$("$DBTOOL" checksum "$(db_of n1 $id)" | cut -d' ' -f1)"
done

# --- a primary paused past its TTL must not acknowledge a write after waking ------
r=$(admin POST /v1/tenants '{"id":"fs","region":"iad","replicas":2,"durability":"async"}')
is "tenant fs created on n2" "201 n2" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
admin POST /v1/tenants/fs/tokens '{"access":"rw","ttl_s":3600}' >/dev/null
TOK_fs=$(jq -r .token "$T_DIR/body")
node "$WORKLOAD" "$ROUTER_URL/t/fs" "$TOK_fs" 1 >/dev/null
wait_until 10 in_step fs
kill -STOP "$PID_agent_n2"
gone() { local h; h=$(holder fs); [ "$h" != n2 ] && [ "$h" != none ]; }
if wait_until $((TTL + 8)) gone; then ok "a new primary takes fs while n2 is paused ($(holder fs))"
else not_ok "a new primary takes fs while n2 is paused" "$(holder fs)"; fi
NEWS=$(holder fs)
: >"$T_DIR/ledger"
kill -CONT "$PID_agent_n2"
# straight at the woken agent, before it has caught up with etcd
SEED=12 TOLERATE_ERRORS=1 node "$WORKLOAD" "$AGENT_URL_n2/t/fs" "$TOK_fs" 30 "$T_DIR/ledger" >"$T_DIR/ws.out"
echo "# writes sent to the woken n2: $(cat "$T_DIR/ws.out")"
wait_until 20 in_step fs
is "every write acknowledged through the woken n2 is on the new primary $NEWS" 0 "$(missing_acked "$NEWS" fs)"
is "n2 rejoined as a replica of fs" replica "$(jq -r '.instances[] | select(.node=="n2") | .role' "$T_DIR/body")"

# --- two orchestrators: one leads, the other takes over when it dies ----------------
p2=$(free_ports 1)
spawn orchestrator2 "$BUILD/orchestrator/shoal-orchestrator" --listen "127.0.0.1:$p2" --etcd "$ETCD_URL" \
    --regions "$SRC/ops/regions.json" --signing-key "$T_DIR/secrets/cluster.key" \
    --admin-token-file "$T_DIR/secrets/admin.token" --leader-ttl 2
wait_until 20 curl -fsS "http://127.0.0.1:$p2/healthz"
is "the first orchestrator leads" leader "$(curl -fsS "$ORCH_URL/healthz" | jq -r .role)"
is "the second stands by" standby "$(curl -fsS "http://127.0.0.1:$p2/healthz" | jq -r .role)"
kill -KILL "$PID_orchestrator"; wait "$PID_orchestrator" 2>/dev/null
ORCH_URL="http://127.0.0.1:$p2"
leads() { curl -fsS "$ORCH_URL/healthz" | jq -e '.role == "leader"'; }
if wait_until 8 leads; then ok "the standby leads once the leader is killed"; else not_ok "the standby leads once the leader is killed"; fi
r=$(admin POST /v1/tenants '{"id":"fz","region":"sin","replicas":2,"durability":"quorum"}')
is "the new leader creates tenants (fz on n3)" "201 n3" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
wait_until 10 in_step fz
kill -KILL "$PID_agent_n3"; wait "$PID_agent_n3" 2>/dev/null
movedz() { local h; h=$(holder fz); [ "$h" != n3 ] && [ "$h" != none ]; }
if wait_until $((TTL + 8)) movedz; then ok "the new leader fails fz over ($(holder fz))"; else not_ok "the new leader fails fz over" "$(holder fz)"; fi

done_testing
