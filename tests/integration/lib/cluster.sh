# tests/integration/lib/cluster.sh: start a real Shoal cluster on loopback for
# a test: etcd on free ports, secrets, orchestrator, agents, router. Every
# process is recorded and stopped by PID on exit, also when a test fails.
# Sourced by test scripts; BUILD must point at the meson build directory.

set -u
: "${BUILD:?BUILD must be the meson build directory}"
T_DIR=$(mktemp -d /tmp/shoal-test.XXXXXX)
T_PIDS=()
T_NAMES=()
TAP_N=0
TAP_FAILED=0

cleanup_cluster() {
    local i
    for ((i = ${#T_PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${T_PIDS[$i]}" 2>/dev/null || true
    done
    for ((i = ${#T_PIDS[@]} - 1; i >= 0; i--)); do
        local n=0
        while kill -0 "${T_PIDS[$i]}" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.05; n=$((n + 1)); done
        kill -KILL "${T_PIDS[$i]}" 2>/dev/null || true
        wait "${T_PIDS[$i]}" 2>/dev/null || true
    done
    if [ "${KEEP_TEST_DIR:-0}" != 1 ]; then rm -rf "$T_DIR"; fi
}
trap cleanup_cluster EXIT

ok() { TAP_N=$((TAP_N + 1)); echo "ok $TAP_N - $1"; }
not_ok() {
    TAP_N=$((TAP_N + 1)); TAP_FAILED=$((TAP_FAILED + 1)); echo "not ok $TAP_N - $1"
    shift; local line; for line in "$@"; do echo "#   $line"; done
}
# is NAME WANT GOT
is() { if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "want: $2" "got:  $3"; return 1; fi; }
# like NAME REGEX GOT
like() { if [[ "$3" =~ $2 ]]; then ok "$1"; else not_ok "$1" "want match: $2" "got: $3"; fi; }
done_testing() { echo "1..$TAP_N"; [ "$TAP_FAILED" -eq 0 ]; }

# wait_until SECONDS CMD...: polls CMD every 50 ms until it succeeds or the deadline passes.
wait_until() {
    local deadline=$(( $(date +%s%N) / 1000000 + $1 * 1000 )); shift
    until "$@" >/dev/null 2>&1; do
        if [ $(( $(date +%s%N) / 1000000 )) -ge $deadline ]; then return 1; fi
        sleep 0.05
    done
}

free_ports() { "$BUILD/tests/freeport" "$1"; }

# spawn NAME CMD...: starts a daemon in the background, logs to $T_DIR/NAME.log.
spawn() {
    local name=$1; shift
    "$@" >>"$T_DIR/$name.log" 2>&1 &
    T_PIDS+=($!)
    T_NAMES+=("$name")
    eval "PID_${name//-/_}=$!"
}

# stop_daemon NAME: SIGTERM, wait, return its exit status.
stop_daemon() {
    local var="PID_${1//-/_}" rc=0
    local pid=${!var}
    kill -TERM "$pid" 2>/dev/null || return 99
    wait "$pid" || rc=$?
    return $rc
}

show_logs() { local f; for f in "$T_DIR"/*.log; do echo "# --- $f"; tail -n 30 "$f" | sed 's/^/#   /'; done; }

# start_etcd: picks its ports once; calling it again (after the test stopped
# etcd) restarts it on the same ports and data directory.
start_etcd() {
    if [ -z "${ETCD_PEER_PORT:-}" ]; then
        local ports; ports=($(free_ports 2))
        ETCD_URL="http://127.0.0.1:${ports[0]}"
        ETCD_PEER_PORT=${ports[1]}
    fi
    spawn etcd etcd --name t --data-dir "$T_DIR/etcd" \
        --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "t=http://127.0.0.1:$ETCD_PEER_PORT"
    wait_until 20 curl -fsS "$ETCD_URL/health" || { echo "Bail out! etcd did not start"; show_logs; exit 1; }
}

# start_cluster [TTL]: etcd, secrets, orchestrator, agents n1/ams n2/iad n3/sin, router (ams);
# $ROUTER_FLAGS is appended to the router's flags (the agents': see start_agent).
start_cluster() {
    local ttl=${1:-5} p
    start_etcd
    "$BUILD/orchestrator/shoalctl" keygen "$T_DIR/secrets" >/dev/null || { echo "Bail out! keygen failed"; exit 1; }
    ADMIN_TOKEN=$(cat "$T_DIR/secrets/admin.token")
    p=($(free_ports 5))
    ORCH_URL="http://127.0.0.1:${p[0]}"
    ROUTER_URL="http://127.0.0.1:${p[1]}"
    AGENT_URL_n1="http://127.0.0.1:${p[2]}"
    AGENT_URL_n2="http://127.0.0.1:${p[3]}"
    AGENT_URL_n3="http://127.0.0.1:${p[4]}"
    start_orchestrator
    T_TTL=$ttl
    start_agent n1; start_agent n2; start_agent n3
    spawn router "$BUILD/orchestrator/shoal-router" --region ams --listen "127.0.0.1:${p[1]}" --etcd "$ETCD_URL" \
        --verify-key "$T_DIR/secrets/cluster.pub" --regions "$SRC/ops/regions.json" ${ROUTER_FLAGS:-}
    for u in "$ORCH_URL" "$ROUTER_URL" "$AGENT_URL_n1" "$AGENT_URL_n2" "$AGENT_URL_n3"; do
        wait_until 20 curl -fsS "$u/healthz" || { echo "Bail out! $u did not become healthy"; show_logs; exit 1; }
    done
    # the orchestrator sees all three agents
    wait_until 10 sh -c "curl -fsS -H 'Authorization: Bearer $ADMIN_TOKEN' $ORCH_URL/v1/nodes | jq -e '.nodes | length == 3'" \
        || { echo "Bail out! agents did not register"; show_logs; exit 1; }
}

# start_orchestrator: (re)starts the orchestrator on $ORCH_URL with
# $ORCH_FLAGS, and $ORCH_FAILPOINTS as SHOAL_FAILPOINTS (api/failpoint.h).
start_orchestrator() {
    spawn orchestrator env SHOAL_FAILPOINTS="${ORCH_FAILPOINTS:-}" "$BUILD/orchestrator/shoal-orchestrator" \
        --listen "${ORCH_URL#http://}" --etcd "$ETCD_URL" \
        --regions "$SRC/ops/regions.json" --signing-key "$T_DIR/secrets/cluster.key" \
        --admin-token-file "$T_DIR/secrets/admin.token" ${ORCH_FLAGS:-}
}

# start_agent NODE: (re)starts agent n1 (ams), n2 (iad) or n3 (sin) on its
# port and data directory, with $AGENT_FLAGS appended.
start_agent() {
    local node=$1 region url
    case $node in n1) region=ams ;; n2) region=iad ;; n3) region=sin ;; esac
    url=AGENT_URL_$node; url=${!url}
    local fp="FAILPOINTS_$node" # e.g. FAILPOINTS_n1=capture-error-t9=error (api/failpoint.h)
    spawn "agent-$node" env SHOAL_FAILPOINTS="${!fp:-}" "$BUILD/nodeagent/shoal-agent" --node "$node" --region "$region" \
        --listen "${url#http://}" --data "$T_DIR/data/$node" --etcd "$ETCD_URL" --lease-ttl "$T_TTL" \
        --verify-key "$T_DIR/secrets/cluster.pub" ${AGENT_FLAGS:-}
}

# admin METHOD PATH [BODY]: prints "STATUS BODY"
admin() {
    local out status
    out=$(curl -sS -o "$T_DIR/body" -w '%{http_code}' -X "$1" -H "Authorization: Bearer $ADMIN_TOKEN" \
        -H 'content-type: application/json' ${3:+--data-binary "$3"} "$ORCH_URL$2")
    status=$out
    printf '%s %s' "$status" "$(cat "$T_DIR/body")"
}

# pipeline URL TOKEN BODY: prints "STATUS BODY"
pipeline() {
    local status
    status=$(curl -sS -m 30 -o "$T_DIR/pbody" -D "$T_DIR/pheaders" -w '%{http_code}' -X POST \
        ${2:+-H "Authorization: Bearer $2"} -H 'content-type: application/json' --data-binary "$3" "$1")
    printf '%s %s' "$status" "$(cat "$T_DIR/pbody")"
}

status_of() { printf '%s' "${1%% *}"; }
body_of() { printf '%s' "${1#* }"; }

# --- replication helpers (dbtool must be built: $BUILD/tests/dbtool) ---------------
DBTOOL=$BUILD/tests/dbtool
# db_of NODE TENANT: the tenant's database file on that node
db_of() { ls "$T_DIR"/data/"$1"/tenants/*/"$2".db 2>/dev/null | head -n1; }
# in_step TENANT: every instance reports one non-null position (leaves the tenant in $T_DIR/body)
in_step() {
    admin GET "/v1/tenants/$1" >/dev/null
    jq -e '[.instances[] | [.txid, .checksum]] | (unique | length == 1) and (.[0][0] != null)' "$T_DIR/body"
}
# missing_acked NODE TENANT: acknowledged ledger numbers ($T_DIR/ledger) the node's file lacks
missing_acked() {
    "$DBTOOL" query "$(db_of "$1" "$2")" "SELECT n FROM ledger" | sort >"$T_DIR/have"
    sort "$T_DIR/ledger" | comm -23 - "$T_DIR/have" | wc -l
}
