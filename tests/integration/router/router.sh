#!/usr/bin/env bash
# tests/integration/router/router.sh BUILD SRC: shoal-router end to end with
# real etcd, agents and routers on loopback: every row of CONTRACT.md's
# header table, reads to the nearest instance and writes to the primary,
# fly-replay from agents and from an ordinary app (--app, replay_app.mjs),
# the 2-hop limit, the replay body cap, targets that vanished, a retried
# read, upstream keep-alive (also after the upstream closed an idle
# connection), large chunked and sized responses, replicas skipped for
# reads while their /healthz reports the tenant lagging, and handovers
# while writes are in flight.
BUILD=$1 SRC=$2
. "$SRC/tests/integration/lib/cluster.sh"
APP=$SRC/tests/integration/router/replay_app.mjs
WORKLOAD=$SRC/tests/integration/replication/workload.mjs
# A request for a tenant not yet in a view waits for it up to these two windows (1 s by
# default); the "created while waiting" checks below need the creation to reach the views
# inside them, so they are wider here than a busy CI machine's slowest watch delivery.
AGENT_FLAGS="--tenant-wait 3s" ROUTER_FLAGS="--replay-timeout 3s" start_cluster 5

# metric URL NAME: the value of an unlabelled Prometheus counter
metric() { curl -sS "$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'; }
served() { local u=AGENT_URL_$1; metric "${!u}" shoal_agent_pipelines_total; }
# hreq NAME CURL-ARGS...: one request; prints the status, keeps $T_DIR/NAME.body and NAME.hdr
hreq() {
    local name=$1; shift
    curl -sS -o "$T_DIR/$name.body" -D "$T_DIR/$name.hdr" -w '%{http_code}' "$@"
}
hdr() { tr -d '\r' <"$T_DIR/$1.hdr" | sed -n "s/^$2: //Ip" | head -n1; }
jbody() { jq -r "$2" "$T_DIR/$1.body" 2>/dev/null; }
sql() { # sql SQL -> a one-statement pipeline body ending in close
    jq -cn --arg s "$1" '{requests:[{type:"execute",stmt:{sql:$s}},{type:"close"}]}'
}

r=$(admin POST /v1/tenants '{"id":"acme","region":"iad"}')
is "tenant acme: primary n2 (iad), replicas n1 (ams) and n3 (sin)" "201 n2" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
admin POST /v1/tenants/acme/tokens '{"access":"rw","ttl_s":3600}' >/dev/null
TOK=$(jq -r .token "$T_DIR/body")
AUTH=(-H "Authorization: Bearer $TOK" -H 'content-type: application/json')
wait_until 10 in_step acme || not_ok "replicas of acme catch up" "$(cat "$T_DIR/body")"
U=$ROUTER_URL/t/acme/v2/pipeline

# --- writes go to the primary; shoal-txid and the cookie come back ------------------
rep0=$(metric "$ROUTER_URL" shoal_router_replays_total)
s=$(hreq w1 -X POST "${AUTH[@]}" --data-binary "$(jq -cn '{requests:[
    {type:"execute",stmt:{sql:"create table t(id integer primary key, v text)"}},
    {type:"execute",stmt:{sql:"insert into t(v) values (?), (?)",args:[{type:"text",value:"a"},{type:"text",value:"b"}]}},
    {type:"close"}]}')" "$U")
is "a write through the router: 200" 200 "$s"
TXID=$(hdr w1 shoal-txid)
like "shoal-txid: the write's TXID in 16 hex digits" '^[0-9a-f]{16}$' "$TXID"
is "Set-Cookie: __shoal_txid with the same TXID, Path=/t/acme/" "__shoal_txid=$TXID; Path=/t/acme/" "$(hdr w1 set-cookie)"
is "the router sent the write straight to the primary (no replay)" "$rep0" "$(metric "$ROUTER_URL" shoal_router_replays_total)"

# --- reads go to the nearest instance (n1 is in ams, like the router) ----------------
n1=$(served n1); n2=$(served n2); rr=$(metric "$ROUTER_URL" shoal_router_reads_to_replicas_total)
s=$(hreq r1 -X POST "${AUTH[@]}" -H "shoal-min-txid: $TXID" --data-binary "$(sql 'select count(*) from t')" "$U")
is "shoal-min-txid: the read sees the write (2 rows)" "200 2" "$s $(jbody r1 '.results[0].response.result.rows[0][0].value')"
is "... served by the nearest instance, n1 in ams" "$((n1 + 1)) $n2" "$(served n1) $(served n2)"
is "... and counted as a read sent to a replica" "$((rr + 1))" "$(metric "$ROUTER_URL" shoal_router_reads_to_replicas_total)"
like "a replica's answer carries shoal-txid too" '^[0-9a-f]{16}$' "$(hdr r1 shoal-txid)"
s=$(hreq r2 -X POST "${AUTH[@]}" -H "Cookie: __shoal_txid=$TXID" --data-binary "$(sql 'select count(*) from t')" "$U")
is "the __shoal_txid cookie works as shoal-min-txid" "200 2" "$s $(jbody r2 '.results[0].response.result.rows[0][0].value')"
s=$(hreq r3 -X POST "${AUTH[@]}" -H "shoal-min-txid: nope" --data-binary "$(sql 'select 1')" "$U")
is "a malformed shoal-min-txid: 400 invalid_request JSON" "400 invalid_request" "$s $(jbody r3 .error.code)"
n1=$(served n1); n2=$(served n2)
s=$(hreq r4 -X POST "${AUTH[@]}" -H "shoal-consistency: primary" --data-binary "$(sql 'select 1')" "$U")
is "shoal-consistency: primary is served by the primary (n2)" "200 $n1 $((n2 + 1))" "$s $(served n1) $(served n2)"
n1=$(served n1)
s=$(hreq r5 -X POST "${AUTH[@]}" --data-binary "$(jq -cn '{requests:[{type:"execute",stmt:{sql:"with x as (select 1) insert into t(v) select * from x"}},{type:"close"}]}')" "$U")
is "WITH ... INSERT counts as a write: to the primary, not n1" "200 $n1" "$s $(served n1)"

# --- fly-prefer-region and fly-force-instance-id route without a replay ----------
n3=$(served n3)
s=$(hreq p1 -X POST "${AUTH[@]}" -H "fly-prefer-region: sin" --data-binary "$(sql 'select 1')" "$U")
is "fly-prefer-region: sin sends the read to n3" "200 $((n3 + 1))" "$s $(served n3)"
n3=$(served n3); n1=$(served n1)
s=$(hreq p2 -X POST "${AUTH[@]}" -H "fly-force-instance-id: n3" --data-binary "$(sql 'select 1')" "$U")
is "fly-force-instance-id: n3 sends the read to n3" "200 $((n3 + 1)) $n1" "$s $(served n3) $(served n1)"
s=$(hreq p3 -X POST "${AUTH[@]}" -H "fly-force-instance-id: n9" --data-binary "$(sql 'select 1')" "$U")
is "fly-force-instance-id naming no instance: 404 node_not_found JSON" "404 node_not_found" "$s $(jbody p3 .error.code)"

# --- fly-replay from an agent, followed by the router ---------------------------
rep0=$(metric "$ROUTER_URL" shoal_router_replays_total)
sent3=$(metric "$AGENT_URL_n3" shoal_agent_replays_sent_total)
s=$(hreq f1 -X POST "${AUTH[@]}" -H "fly-force-instance-id: n3" --data-binary "$(sql "insert into t(v) values ('via-n3')")" "$U")
is "a write forced onto replica n3: 200" 200 "$s"
is "... n3 answered fly-replay (shoal-accept-replay: 1 was sent)" "$((sent3 + 1))" "$(metric "$AGENT_URL_n3" shoal_agent_replays_sent_total)"
is "... the router followed it once" "$((rep0 + 1))" "$(metric "$ROUTER_URL" shoal_router_replays_total)"
like "... and relayed the primary's shoal-txid" '^[0-9a-f]{16}$' "$(hdr f1 shoal-txid)"
s=$(hreq f2 -X POST "${AUTH[@]}" -H "shoal-consistency: primary" --data-binary "$(sql "select count(*) from t where v = 'via-n3'")" "$U")
is "the replayed write happened exactly once" 1 "$(jbody f2 '.results[0].response.result.rows[0][0].value')"
s=$(hreq f3 -X POST "${AUTH[@]}" -H 'shoal-accept-replay: 1' --data-binary "$(sql "insert into t(v) values ('x')")" "$AGENT_URL_n3/t/acme/v2/pipeline")
is "an agent given shoal-accept-replay: 1 answers fly-replay: instance=<primary>" "instance=n2" "$(hdr f3 fly-replay)"
is "... with an empty JSON body" "{}" "$(cat "$T_DIR/f3.body")"
s=$(hreq f4 -X POST "${AUTH[@]}" --data-binary "$(sql "insert into t(v) values ('fwd')")" "$AGENT_URL_n3/t/acme/v2/pipeline")
is "without it the agent forwards the write to the primary itself" "200 " "$s $(hdr f4 fly-replay)"
like "... and relays the primary's shoal-txid" '^[0-9a-f]{16}$' "$(hdr f4 shoal-txid)"

# --- a body too large to replay: 413 JSON; the same body without a replay is fine -----
head -c 1200000 /dev/zero | tr '\0' 'x' >"$T_DIR/big"
jq -cn --rawfile x "$T_DIR/big" '{requests:[{type:"execute",stmt:{sql:"insert into t(v) values (?)",args:[{type:"text",value:$x}]}},{type:"close"}]}' >"$T_DIR/big.json"
s=$(hreq b1 -X POST "${AUTH[@]}" -H "fly-force-instance-id: n3" --data-binary "@$T_DIR/big.json" "$U")
is "a 1.2 MB write that needs a replay: 413 body_too_large JSON" "413 body_too_large" "$s $(jbody b1 .error.code)"
like "... naming --replay-max-body" "replay-max-body" "$(jbody b1 .error.message)"
s=$(hreq b2 -X POST "${AUTH[@]}" --data-binary "@$T_DIR/big.json" "$U")
is "the same write sent straight to the primary: 200" 200 "$s"

# --- batons stick to their agent: a transaction that reads, then writes ------------
s=$(hreq x1 -X POST "${AUTH[@]}" --data-binary '{"requests":[{"type":"execute","stmt":{"sql":"begin"}},{"type":"execute","stmt":{"sql":"select count(*) from t"}}]}' "$U")
B=$(jbody x1 .baton)
is "an interactive transaction opened through the router lives on the primary" "200 n2" "$s ${B%%.*}"
s=$(hreq x2 -X POST "${AUTH[@]}" --data-binary "$(jq -cn --arg b "$B" --arg s "insert into t(v) values ('in-tx')" '{baton:$b,requests:[{type:"execute",stmt:{sql:$s}},{type:"execute",stmt:{sql:"commit"}},{type:"close"}]}')" "$U")
is "... its write and commit follow the baton: 200, no errors" "200 ok ok" "$s $(jbody x2 '[.results[0].type, .results[1].type] | join(" ")')"
s=$(hreq x3 -X POST "${AUTH[@]}" -H "shoal-consistency: primary" --data-binary "$(sql "select count(*) from t where v = 'in-tx'")" "$U")
is "... and the row is there" 1 "$(jbody x3 '.results[0].response.result.rows[0][0].value')"
s=$(hreq x4 -X POST "${AUTH[@]}" --data-binary '{"baton":"n9.AAAA","requests":[{"type":"close"}]}' "$U")
is "a baton naming an unknown node: 400 invalid_baton JSON" "400 invalid_baton" "$s $(jbody x4 .error.code)"
s=$(hreq x5 -X POST "${AUTH[@]}" --data-binary '{"batch":{"steps":[{"stmt":{"sql":"select count(*) from t"}}]}}' "$ROUTER_URL/t/acme/v3/cursor")
is "/v3/cursor through the router: 200" 200 "$s"

# --- upstream connections are kept alive and reused -----------------------------
c0=$(metric "$ROUTER_URL" shoal_router_upstream_connects_total); u0=$(metric "$ROUTER_URL" shoal_router_upstream_reuses_total)
for i in $(seq 1 20); do hreq ka -X POST "${AUTH[@]}" --data-binary "$(sql 'select 1')" "$U" >/dev/null; done
c1=$(metric "$ROUTER_URL" shoal_router_upstream_connects_total); u1=$(metric "$ROUTER_URL" shoal_router_upstream_reuses_total)
if [ $((c1 - c0)) -le 3 ] && [ $((u1 - u0)) -ge 17 ]; then ok "20 reads in a row reuse kept-alive upstream connections ($((c1 - c0)) new, $((u1 - u0)) reused)"
else not_ok "20 reads in a row reuse kept-alive upstream connections" "new $((c1 - c0)) reused $((u1 - u0))"; fi

# --- a tenant not in a router's or agent's view yet is waited for, then 404 ----------
# (a client that creates a tenant and queries it at once may beat the etcd watch of
# the router or agent it talks to; a valid token means the tenant exists or is about to)
r=$(admin POST /v1/tenants '{"id":"late","region":"ams","replicas":0}')
is "tenant late created" 201 "$(status_of "$r")"
admin POST /v1/tenants/late/tokens '{"access":"rw","ttl_s":3600}' >/dev/null
LTOK=$(jq -r .token "$T_DIR/body")
r=$(admin DELETE /v1/tenants/late)
is "... and deleted again" 204 "$(status_of "$r")"
wait_until 10 sh -c "[ \"\$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Bearer $LTOK' \
    --data-binary '{\"requests\":[]}' $ROUTER_URL/t/late/v2/pipeline)\" = 404 ]"
s=$(hreq u1 -X POST -H "Authorization: Bearer $LTOK" --data-binary "$(sql 'select 1')" "$ROUTER_URL/t/late/v2/pipeline")
is "a valid token for a tenant that does not exist: 404 tenant_not_found JSON from the router (after the wait)" \
    "404 tenant_not_found" "$s $(jbody u1 .error.code)"
s=$(hreq u1a -X POST -H "Authorization: Bearer $LTOK" --data-binary "$(sql 'select 1')" "$AGENT_URL_n3/t/late/v2/pipeline")
is "... and from an agent" "404 tenant_not_found" "$s $(jbody u1a .error.code)"
# requests for it in flight while the tenant is created again are served
hreq u2 -X POST -H "Authorization: Bearer $LTOK" --data-binary "$(sql 'select 41 + 1')" \
    "$ROUTER_URL/t/late/v2/pipeline" >"$T_DIR/u2.status" &
U2=$!
hreq u3 -X POST -H "Authorization: Bearer $LTOK" --data-binary "$(sql 'select 40 + 3')" \
    "$AGENT_URL_n3/t/late/v2/pipeline" >"$T_DIR/u3.status" &
U3=$!
wait_until 5 sh -c "curl -sS $ROUTER_URL/metrics | grep -q '^shoal_router_requests_in_flight [1-9]'"
is "... requests for the missing tenant are waiting in the router and in agent n3" "0 0" \
    "$(kill -0 $U2 2>/dev/null; echo $?) $(kill -0 $U3 2>/dev/null; echo $?)"
r=$(admin POST /v1/tenants '{"id":"late","region":"ams","replicas":0}')
is "tenant late created again (primary n1)" "201 n1" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
wait $U2 $U3
is "... and the request waiting in the router is served: 200, 42" "200 42" \
    "$(cat "$T_DIR/u2.status") $(jbody u2 '.results[0].response.result.rows[0][0].value')"
is "... and the one waiting in n3 too, by the primary: 200, 43" "200 43" \
    "$(cat "$T_DIR/u3.status") $(jbody u3 '.results[0].response.result.rows[0][0].value')"
# A request another agent forwarded to the new primary may reach it before the
# primary's own watch delivers the tenant (the forwarder saw the lease first): the
# primary waits for it too instead of answering 404. Here the forwarding is played
# by the test: n1 gets the request before "late" exists again, marked forwarded.
r=$(admin DELETE /v1/tenants/late)
is "tenant late deleted" 204 "$(status_of "$r")"
# n1's own view has lost it again (a plain request waits, then 404)
wait_until 10 sh -c "[ \"\$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'Authorization: Bearer $LTOK' \
    --data-binary '{\"requests\":[]}' $AGENT_URL_n1/t/late/v2/pipeline)\" = 404 ]"
hreq u4 -X POST -H "Authorization: Bearer $LTOK" -H "shoal-forwarded-by: n3" --data-binary "$(sql 'select 40 + 4')" \
    "$AGENT_URL_n1/t/late/v2/pipeline" >"$T_DIR/u4.status" &
U4=$!
# n1 answered at once before (404): still running after 0.3 s means it waits
sleep 0.3
is "... a forwarded request for it waits in n1" 0 "$(kill -0 $U4 2>/dev/null; echo $?)"
r=$(admin POST /v1/tenants '{"id":"late","region":"ams","replicas":0}')
is "tenant late created a third time (primary n1)" "201 n1" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
wait $U4
is "... and a forwarded request that reached n1 first is served by it: 200, 44" "200 44" \
    "$(cat "$T_DIR/u4.status") $(jbody u4 '.results[0].response.result.rows[0][0].value')"
r=$(admin DELETE /v1/tenants/late) # placement below counts tenants per node
is "tenant late deleted" 204 "$(status_of "$r")"

# --- the router's own request headers, seen by a fake agent ------------------------
# The fake is registered in etcd like an agent (node key, tenant record, lease
# key) and echoes what it receives.
put() { curl -sS -X POST "$ETCD_URL/v3/kv/put" --data "{\"key\":\"$(printf '%s' "$1" | base64 -w0)\",\"value\":\"$(printf '%s' "$2" | base64 -w0)\"}" >/dev/null; }
FP=$(free_ports 1)
spawn fake node "$APP" --port "$FP" --instance fk --region ams --primary fk --fake-agent
wait_until 10 curl -fsS "http://127.0.0.1:$FP/healthz" || not_ok "fake agent starts"
put /shoal/nodes/fk "{\"node\":\"fk\",\"region\":\"ams\",\"url\":\"http://127.0.0.1:$FP\",\"started_at\":1}"
put /shoal/tenants/fake '{"id":"fake","region":"ams","placement":"pinned","durability":"async","replicas":0,"primary":"fk","nodes":["fk"],"generation":1,"created_at":1}'
put /shoal/leases/fake "{\"holder\":\"fk\",\"url\":\"http://127.0.0.1:$FP\"}"
wait_until 5 sh -c "curl -fsS -H 'Authorization: Bearer $ADMIN_TOKEN' -X POST --data '{\"access\":\"rw\"}' $ORCH_URL/v1/tenants/fake/tokens >$T_DIR/ftok"
FTOK=$(jq -r .token "$T_DIR/ftok")
s=$(hreq k1 -X POST -H "Authorization: Bearer $FTOK" -H "fly-replay-src: instance=forged" --data-binary "$(sql "insert into x values (1)")" "$ROUTER_URL/t/fake/v2/pipeline")
is "router → fake agent: 200" 200 "$s"
is "the router sends shoal-accept-replay: 1" 1 "$(jbody k1 '.headers["shoal-accept-replay"]')"
is "the router sends shoal-client-region: its region (ams)" ams "$(jbody k1 '.headers["shoal-client-region"]')"
is "a client's own fly-replay-src is not passed on" null "$(jbody k1 .src)"
is "the upstream's shoal-txid reaches the client" 000000000000002a "$(hdr k1 shoal-txid)"

# --- handovers while writes are in flight through the router -----------------------
r=$(admin POST /v1/tenants '{"id":"hv","region":"ams","replicas":2}')
is "tenant hv: primary n1" "201 n1" "$(status_of "$r") $(body_of "$r" | jq -r .primary.node)"
admin POST /v1/tenants/hv/tokens '{"access":"rw","ttl_s":3600}' >/dev/null
HTOK=$(jq -r .token "$T_DIR/body")
node "$WORKLOAD" "$ROUTER_URL/t/hv" "$HTOK" 1 >/dev/null
wait_until 10 in_step hv
: >"$T_DIR/ledger"
SEED=7 CONC=4 node "$WORKLOAD" "$ROUTER_URL/t/hv" "$HTOK" 400 "$T_DIR/ledger" >"$T_DIR/hv.out" 2>&1 &
W=$!
wait_until 20 sh -c "[ \$(wc -l <$T_DIR/ledger) -ge 20 ]"
ops=""
for to in n2 n3; do
    r=$(admin POST "/v1/tenants/hv/handover?wait=1" "{\"to_node\":\"$to\"}")
    ops="$ops $(body_of "$r" | jq -r .state)"
done
wait "$W"
is "two handovers while 4 writers run through the router: both done" " done done" "$ops"
is "every one of the 400 write transactions was acknowledged, none failed" "400 0" "$(jq -r '"\(.ok) \(.failed)"' "$T_DIR/hv.out" 2>/dev/null || cat "$T_DIR/hv.out")"
if wait_until 20 in_step hv; then ok "hv's instances reach one position"; else not_ok "hv's instances reach one position" "$(cat "$T_DIR/body")"; fi
is "the new primary n3 holds every acknowledged write" 0 "$(missing_acked n3 hv)"
# the route table follows the handover: a write goes straight to n3, no replay
no_replay_write() {
    local before; before=$(metric "$ROUTER_URL" shoal_router_replays_total)
    [ "$(hreq hw -X POST -H "Authorization: Bearer $HTOK" --data-binary "$(sql 'create table if not exists probe(x)')" "$ROUTER_URL/t/hv/v2/pipeline")" = 200 ] &&
        [ "$(metric "$ROUTER_URL" shoal_router_replays_total)" = "$before" ]
}
if wait_until 2 no_replay_write; then ok "after the handover the router writes to n3 directly"
else not_ok "after the handover the router writes to n3 directly" "$(cat "$T_DIR/hw.body")"; fi

# --- active health: a replica reporting a tenant as lagging gets none of its reads -----
# Two more fake agents: fi (iad) holds the leases, fl (ams, nearest the
# router) answers /healthz 503 listing tenant "lag" as lagging.
FP2=($(free_ports 2))
spawn fake-i node "$APP" --port "${FP2[0]}" --instance fi --region iad --primary fi --fake-agent
spawn fake-l node "$APP" --port "${FP2[1]}" --instance fl --region ams --primary fi --fake-agent --lagging lag
for p in "${FP2[@]}"; do wait_until 10 curl -sS -o /dev/null "http://127.0.0.1:$p/healthz" || not_ok "fake agent on $p starts"; done
put /shoal/nodes/fi "{\"node\":\"fi\",\"region\":\"iad\",\"url\":\"http://127.0.0.1:${FP2[0]}\",\"started_at\":1}"
put /shoal/nodes/fl "{\"node\":\"fl\",\"region\":\"ams\",\"url\":\"http://127.0.0.1:${FP2[1]}\",\"started_at\":1}"
for t in lag nolag; do
    put "/shoal/tenants/$t" "{\"id\":\"$t\",\"region\":\"iad\",\"placement\":\"pinned\",\"durability\":\"async\",\"replicas\":1,\"primary\":\"fi\",\"nodes\":[\"fi\",\"fl\"],\"generation\":1,\"created_at\":1}"
    put "/shoal/leases/$t" "{\"holder\":\"fi\",\"url\":\"http://127.0.0.1:${FP2[0]}\"}"
done
wait_until 5 sh -c "curl -fsS -H 'Authorization: Bearer $ADMIN_TOKEN' -X POST --data '{\"access\":\"rw\"}' $ORCH_URL/v1/tenants/lag/tokens >$T_DIR/ltok"
wait_until 5 sh -c "curl -fsS -H 'Authorization: Bearer $ADMIN_TOKEN' -X POST --data '{\"access\":\"rw\"}' $ORCH_URL/v1/tenants/nolag/tokens >$T_DIR/ntok"
lagging_seen() { [ "$(metric "$ROUTER_URL" shoal_router_health_lagging_replicas)" -ge 1 ]; }
if wait_until 5 lagging_seen; then ok "the router's /healthz probes learn that fl lags for tenant lag"
else not_ok "the router's /healthz probes learn that fl lags for tenant lag" "$(curl -sS "$ROUTER_URL/metrics" | grep health)"; fi
s=$(hreq g1 -X POST -H "Authorization: Bearer $(jq -r .token "$T_DIR/ntok")" --data-binary "$(sql 'select 1')" "$ROUTER_URL/t/nolag/v2/pipeline")
is "a read of tenant nolag goes to its nearest replica, fl in ams" "200 fl" "$s $(jbody g1 .instance)"
s=$(hreq g2 -X POST -H "Authorization: Bearer $(jq -r .token "$T_DIR/ltok")" --data-binary "$(sql 'select 1')" "$ROUTER_URL/t/lag/v2/pipeline")
is "a read of tenant lag skips fl, which reports it lagging: the primary fi answers" "200 fi" "$s $(jbody g2 .instance)"

# --- an ordinary app behind a router (--app) ------------------------------------
AP=($(free_ports 4))
spawn app-a1 node "$APP" --port "${AP[0]}" --instance a1 --region ams --primary s1
spawn app-i1 node "$APP" --port "${AP[1]}" --instance i1 --region iad --primary s1
spawn app-s1 node "$APP" --port "${AP[2]}" --instance s1 --region sin --primary s1 --keepalive-ms 300
APPR=http://127.0.0.1:${AP[3]}
spawn router-app "$BUILD/orchestrator/shoal-router" --region ams --listen "127.0.0.1:${AP[3]}" --etcd "$ETCD_URL" \
    --verify-key "$T_DIR/secrets/cluster.pub" --regions "$SRC/ops/regions.json" --workers 4 \
    --replay-max-body 65536 \
    --app "shop=ams:a1:http://127.0.0.1:${AP[0]},iad:i1:http://127.0.0.1:${AP[1]},sin:s1:http://127.0.0.1:${AP[2]}"
for p in "${AP[@]}"; do wait_until 10 curl -sS -o /dev/null "http://127.0.0.1:$p/" || not_ok "port $p up"; done

s=$(hreq a1 "$APPR/whoami")
is "app: a GET goes to the nearest instance (a1, ams)" "200 a1 ams" "$s $(jbody a1 .instance) $(jbody a1 .fly_region)"
s=$(hreq a2 "$APPR/whoami?region=sin")
is "app: ?region=sin goes to s1 without a replay" "200 s1 null" "$s $(jbody a2 .instance) $(jbody a2 .src)"
s=$(hreq a3 -H "fly-force-instance-id: a1" "$APPR/whoami?region=iad")
is "app: a1's own fly-replay: region=iad is followed to i1" "200 i1" "$s $(jbody a3 .instance)"
like "... and i1 sees fly-replay-src naming a1, ams and a time" '^instance=a1;region=ams;t=[0-9]{16}$' "$(jbody a3 .src)"
s=$(hreq a4 -X POST --data-binary 'item' "$APPR/items")
is "app: a POST on a1 is replayed to the primary s1 (instance=), body intact" "200 s1 4 1" \
    "$s $(jbody a4 .instance) $(jbody a4 .body_len) $(jbody a4 .items)"
s=$(hreq a5 "$APPR/replay?to=region%3D%22syd%2Ciad%22%3Bstate%3Dabc")
is "app: region=\"syd,iad\";state=abc goes to iad (no instance in syd)" "200 i1" "$s $(jbody a5 .instance)"
like "... and the state arrives in fly-replay-src" ';state=abc$' "$(jbody a5 .src)"
s=$(hreq a6 "$APPR/replay?to=elsewhere%3Dtrue")
like "app: elsewhere=true goes to another instance" '^200 (i1|s1)$' "$s $(jbody a6 .instance)"
s=$(hreq a7 "$APPR/replay?to=prefer_instance%3Ds1")
is "app: prefer_instance=s1 goes to s1" "200 s1" "$s $(jbody a7 .instance)"
s=$(hreq a8 "$APPR/replay?to=instance%3Dghost%3Btimeout%3D200ms")
is "app: instance=ghost (no such instance): 502 bad_gateway JSON" "502 bad_gateway" "$s $(jbody a8 .error.code)"
like "... saying the target does not exist" "does not exist" "$(jbody a8 .error.message)"
s=$(hreq a9 "$APPR/replay?to=instance%3Dghost%3Btimeout%3D200ms%3Bfallback%3Dforce_self")
is "app: with fallback=force_self the request returns to a1" "200 a1" "$s $(jbody a9 .instance)"
is "... carrying fly-replay-failed with the reason" "instance=ghost;reason=no_candidate" "$(jbody a9 .failed)"
s=$(hreq a10 "$APPR/loop")
is "app: replays past 2 hops: 508 replay_loop JSON" "508 replay_loop" "$s $(jbody a10 .error.code)"
s=$(hreq a11 "$APPR/replay?to=region%3DXX")
is "app: a malformed fly-replay: 502 JSON saying so" "502 malformed" "$s $(jbody a11 .error.message | grep -o malformed)"
head -c 70000 /dev/zero >"$T_DIR/big70k"
s=$(hreq a12 -X POST --data-binary "@$T_DIR/big70k" "$APPR/items")
is "app: a 70 kB POST that needs a replay, over --replay-max-body 65536: 413 JSON" "413 body_too_large" "$s $(jbody a12 .error.code)"
s=$(hreq a13 -X POST --data-binary "@$T_DIR/big70k" "$APPR/items?region=sin")
is "app: the same POST sent to the primary's region needs no replay: 200" "200 s1 70000" "$s $(jbody a13 .instance) $(jbody a13 .body_len)"
for i in $(seq 1 20); do curl -sS -o /dev/null "$APPR/whoami"; done
s=$(hreq a14 "$APPR/whoami")
c=$(jbody a14 .conns)
# one kept-alive router connection (the requests come one at a time), plus the test's own start-up probe
if [ "$s" = 200 ] && [ "$c" -ge 1 ] && [ "$c" -le 3 ]; then ok "app: 22+ requests reached a1 over $c connections (1 from the router + 1 probe)"
else not_ok "app: upstream connections are kept alive" "status $s conns $c"; fi
s=$(curl -sS -o "$T_DIR/big1" -w '%{http_code}' "$APPR/big?bytes=5242880&chunked=1")
is "app: a 5 MiB chunked response is relayed whole" "200 5242880" "$s $(wc -c <"$T_DIR/big1")"
s=$(curl -sS -o "$T_DIR/big2" -w '%{http_code}' "$APPR/big?bytes=3145728")
is "app: a 3 MiB response with content-length is relayed whole" "200 3145728" "$s $(wc -c <"$T_DIR/big2")"
s=$(hreq st1 "$APPR/whoami?region=sin")
sleep 1.8 # s1 closes connections idle for 300 ms (--keepalive-ms; Node 20 adds 1 s): the router's pooled one is gone
s="$s $(hreq st2 "$APPR/whoami?region=sin")"
is "app: after s1 closed the router's idle connection, the next request is served on a new one" "200 200 s1 yes" \
    "$s $(jbody st2 .instance) $([ "$(jbody st2 .conns)" -gt "$(jbody st1 .conns)" ] && echo yes)"

# --- an app instance that vanished -------------------------------------------------
kill -KILL "$PID_app_i1"; wait "$PID_app_i1" 2>/dev/null
ret=$(metric "$APPR" shoal_router_retries_total)
s=$(hreq v1 -H "fly-prefer-region: iad" "$APPR/whoami")
is "app: a GET to a dead instance is retried once elsewhere: 200" "200 $((ret + 1))" "$s $(metric "$APPR" shoal_router_retries_total)"
s=$(hreq v2 -X POST -H "fly-force-instance-id: i1" --data-binary 'x' "$APPR/items")
is "app: a request forced onto the dead instance: 502 bad_gateway JSON" "502 bad_gateway" "$s $(jbody v2 .error.code)"
s=$(hreq v3 "$APPR/replay?to=instance%3Di1%3Btimeout%3D300ms")
is "app: a replay to the dead instance: retried, then 502 JSON" "502 bad_gateway" "$s $(jbody v3 .error.code)"
s=$(hreq v4 "$APPR/replay?to=instance%3Di1%3Btimeout%3D300ms%3Bfallback%3Dprefer_self")
is "app: ... with fallback=prefer_self it returns to a1 with reason=timeout" "200 a1 instance=i1;reason=timeout" \
    "$s $(jbody v4 .instance) $(jbody v4 .failed)"

# --- pipelined HTTP/1.1 and clients that leave (deferred replies keep the socket polled) ---
# raw URL REQUEST-FILE: sends the file in one write on one connection; prints what came back until the server closed
raw() {
    local hp=${1#http://}
    exec 3<>"/dev/tcp/${hp%%:*}/${hp##*:}" || return 1
    cat "$2" >&3
    timeout 10 cat <&3
    exec 3<&- 3>&-
}
# pipe_req PATH BODY [close]: one raw HTTP/1.1 POST with the tenant's token
pipe_req() {
    printf 'POST %s HTTP/1.1\r\nhost: t\r\nauthorization: Bearer %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s' \
        "$1" "$TOK" "${#2}" "${3:+$'connection: close\r\n'}" "$2"
}
for target in "$ROUTER_URL" "$AGENT_URL_n2"; do
    { pipe_req /t/acme/v2/pipeline "$(sql 'select 41 + 1')"; pipe_req /t/acme/v2/pipeline "$(sql 'select 42 + 1')" close; } >"$T_DIR/pipe.req"
    out=$(raw "$target" "$T_DIR/pipe.req" | tr -d '\r')
    got="$(grep -o 'HTTP/1.1 200' <<<"$out" | wc -l) $(grep -o '"value":"4[23]"' <<<"$out" | tr '\n' ' ')"
    is "two pipelined reads on one connection to ${target##*:}: both answered, in order" '2 "value":"42" "value":"43" ' "$got"
    # the second one arrives while the first (a slow read) is still deferred
    slow=$(sql 'with recursive c(x) as (select 1 union all select x + 1 from c where x < 400000) select count(*) from c')
    pipe_req /t/acme/v2/pipeline "$slow" >"$T_DIR/pipe1.req"
    pipe_req /t/acme/v2/pipeline "$(sql 'select 44 + 1')" close >"$T_DIR/pipe2.req"
    hp=${target#http://}
    exec 3<>"/dev/tcp/${hp%%:*}/${hp##*:}"
    cat "$T_DIR/pipe1.req" >&3
    sleep 0.02
    cat "$T_DIR/pipe2.req" >&3
    out=$(timeout 10 cat <&3 | tr -d '\r')
    exec 3<&- 3>&-
    got="$(grep -o 'HTTP/1.1 200' <<<"$out" | wc -l) $(grep -o '"value":"\(400000\|45\)"' <<<"$out" | tr '\n' ' ')"
    is "... and one sent while the first is in flight: both answered, in order" '2 "value":"400000" "value":"45" ' "$got"
done
# a client that sends a read and closes at once: the next requests are served as usual
pipe_req /t/acme/v2/pipeline "$(sql 'select 1')" >"$T_DIR/gone.req"
for i in 1 2 3 4 5; do
    hp=${ROUTER_URL#http://}
    exec 3<>"/dev/tcp/${hp%%:*}/${hp##*:}" && cat "$T_DIR/gone.req" >&3 && exec 3<&- 3>&-
done
s=$(hreq g1 -X POST "${AUTH[@]}" --data-binary "$(sql 'select 7')" "$U")
is "after clients left with their reads in flight, the router serves the next one" "200 7" \
    "$s $(jbody g1 '.results[0].response.result.rows[0][0].value')"

# --- an agent that vanished ----------------------------------------------------------
kill -KILL "$PID_agent_n3"; wait "$PID_agent_n3" 2>/dev/null
s=$(hreq d1 -X POST "${AUTH[@]}" -H "fly-prefer-region: sin" --data-binary "$(sql 'select count(*) from t')" "$U")
like "a read for the dead n3 is retried on another instance: 200 with the rows" '^200 [1-9]' "$s $(jbody d1 '.results[0].response.result.rows[0][0].value')"
s=$(hreq d2 -X POST "${AUTH[@]}" -H "fly-force-instance-id: n3" --data-binary "$(sql "insert into t(v) values ('z')")" "$U")
is "a write forced onto the dead n3: 502 bad_gateway JSON" "502 bad_gateway" "$s $(jbody d2 .error.code)"
s=$(hreq d3 -X POST "${AUTH[@]}" --data-binary "$(sql "insert into t(v) values ('still')")" "$U")
is "writes to the live primary go on: 200" 200 "$s"

for d in router router-app; do stop_daemon "$d"; is "$d exits 0 on SIGTERM" 0 "$?"; done
done_testing
