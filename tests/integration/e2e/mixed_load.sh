#!/usr/bin/env bash
# Many clients at once, each request with its own expected answer: reads with
# their own argument, writes, a token for another tenant, a bad token, reads of a
# second tenant. An agent handles the requests a loop turn brings together at
# the turn's end (reads in place a stage at a time): none may get another's
# answer, lose its write or skip its token check. Run twice by meson: with the
# agents' defaults and with --inline-reads 0 (no reads in place, every request
# handled as it arrives).
# usage: mixed_load.sh BUILD_DIR SOURCE_DIR [AGENT_FLAG...]
BUILD=$1 SRC=$2
shift 2
AGENT_FLAGS="$*"
. "$SRC/tests/integration/lib/cluster.sh"

start_cluster 5

for id in alpha beta; do
    r=$(admin POST /v1/tenants "{\"id\":\"$id\",\"region\":\"iad\",\"replicas\":0}")
    is "create $id" 201 "$(status_of "$r")"
    r=$(admin POST "/v1/tenants/$id/tokens" '{"access":"rw","ttl_s":600}')
    is "token for $id" 201 "$(status_of "$r")"
    body_of "$r" | jq -r .token >"$T_DIR/token.$id"
done
URL=$AGENT_URL_n2 # iad: the primary of both
r=$(pipeline "$URL/t/alpha/v2/pipeline" "$(cat "$T_DIR/token.alpha")" \
    '{"requests":[{"type":"execute","stmt":{"sql":"create table t(v integer)"}},{"type":"close"}]}')
is "alpha: table created" 200 "$(status_of "$r")"

# one request: N KIND DIR URL -> prints "N KIND STATUS ANSWER"
cat >"$T_DIR/one.sh" <<'EOF'
n=$1 kind=$2 dir=$3 url=$4
stmt() { printf '{"requests":[{"type":"execute","stmt":{"sql":"%s","args":[{"type":"integer","value":"%s"}]}},{"type":"close"}]}' "$1" "$2"; }
case $kind in
    read) tenant=alpha tok=$(cat "$dir/token.alpha") body=$(stmt "select ?" "$n") ;;
    write) tenant=alpha tok=$(cat "$dir/token.alpha") body=$(stmt "insert into t(v) values (?)" "$n") ;;
    foreign) tenant=alpha tok=$(cat "$dir/token.beta") body=$(stmt "select ?" "$n") ;;
    badtoken) tenant=alpha tok=not.a.token body=$(stmt "select ?" "$n") ;;
    readb) tenant=beta tok=$(cat "$dir/token.beta") body=$(stmt "select ? + 1000" "$n") ;;
esac
out=$(curl -sS -m 30 -w '\n%{http_code}' -X POST -H "Authorization: Bearer $tok" \
    -H 'content-type: application/json' --data-binary "$body" "$url/t/$tenant/v2/pipeline")
status=${out##*$'\n'}
answer=$(printf '%s' "${out%$'\n'*}" | jq -r 'if .results then (.results[0].response.result | (.rows[0][0].value // .affected_row_count | tostring)) else .error.code end' 2>/dev/null)
echo "$n $kind $status $answer"
EOF
kinds=(read read write read foreign read badtoken readb read write)
for n in $(seq 1 300); do echo "$n ${kinds[$((n % ${#kinds[@]}))]} $T_DIR $URL"; done >"$T_DIR/plan"
xargs -P 24 -L 1 bash "$T_DIR/one.sh" <"$T_DIR/plan" >"$T_DIR/got" 2>"$T_DIR/curl.err"
# N KIND STATUS ANSWER -> "" if right, else what is wrong
wrong=$(awk '{
    want_s = 200; want_a = $1
    if ($2 == "write") want_a = 1
    if ($2 == "readb") want_a = $1 + 1000
    if ($2 == "foreign") { want_s = 403; want_a = "forbidden" }
    if ($2 == "badtoken") { want_s = 401; want_a = "unauthorized" }
    if ($3 != want_s || $4 != want_a) print "request " $1 " (" $2 "): " $3 " " $4 ", want " want_s " " want_a
}' "$T_DIR/got" | head -5)
is "300 requests from 24 clients at once answered" 300 "$(grep -c . "$T_DIR/got")"
is "each with its own answer and status" "" "$wrong"
writes=$(awk '$2 == "write"' "$T_DIR/plan" | grep -c .)
r=$(pipeline "$URL/t/alpha/v2/pipeline" "$(cat "$T_DIR/token.alpha")" \
    '{"requests":[{"type":"execute","stmt":{"sql":"select count(*), sum(v) from t"}},{"type":"close"}]}')
is "every write landed once" "$writes $(awk '$2 == "write" { s += $1 } END { print s }' "$T_DIR/plan")" \
    "$(body_of "$r" | jq -r '.results[0].response.result.rows[0] | map(.value) | join(" ")')"
in_place=$(curl -sS "$URL/metrics" | awk '$1 == "shoal_agent_reads_in_place_total" { print $2 }')
if [[ " ${AGENT_FLAGS:-} " == *" --inline-reads 0 "* ]]; then
    is "no read ran in place (--inline-reads 0)" 0 "$in_place"
else
    if [ "${in_place:-0}" -gt 0 ]; then ok "reads ran in place ($in_place)"; else not_ok "reads ran in place" "got ${in_place:-none}"; fi
fi
done_testing
