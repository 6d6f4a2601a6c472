#!/usr/bin/env bash
# /v3/cursor streams read-only batches (issue #3), end to end on a real
# cluster: a 200,000-row cursor (more row data than the 16 MiB buffered cap)
# arrives chunked, complete and in order, with bounded agent memory; the
# first step's entries arrive while a later step is still running; a reader
# that pauses still gets every row; clients that disconnect mid-stream leave
# the agent healthy; write cursors keep their buffered reply.
# usage: cursor.sh BUILD_DIR SOURCE_DIR
BUILD=$1 SRC=$2
. "$SRC/tests/integration/lib/cluster.sh"

CLIENT="$SRC/tests/integration/cursor/cursor_client.mjs"
# The statement time limit covers a whole big cursor (about 2 s alone here)
# with room for other suites running in parallel. Sanitizer builds
# (SHOAL_TEST_SCALE=40) run about five times slower: fewer rows, more time.
SCALE=${SHOAL_TEST_SCALE:-100}
NROWS=$((200000 * SCALE / 100))
LIMIT_MS=$((10000 * 100 / SCALE))
AGENT_FLAGS="--stmt-timeout-ms $LIMIT_MS"

start_cluster 5

r=$(admin POST /v1/tenants '{"id":"cur","region":"iad"}')
is "create tenant" 201 "$(status_of "$r")"
r=$(admin POST /v1/tenants/cur/tokens '{"access":"rw","ttl_s":600}')
TOKEN=$(body_of "$r" | jq -r .token)
AGENT=$AGENT_URL_n2 # the primary (iad)
CURSOR_URL="$AGENT/t/cur/v3/cursor"

# 200,000 rows of about 110 bytes of text each
LOAD="{\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"create table big(id integer primary key, v text)\"}},{\"type\":\"execute\",\"stmt\":{\"sql\":\"with recursive c(x) as (select 1 union all select x+1 from c where x < $NROWS) insert into big select x, printf('%d-%0100d', x, x) from c\"}},{\"type\":\"close\"}]}"
r=$(pipeline "$AGENT/t/cur/v2/pipeline" "$TOKEN" "$LOAD")
is "load $NROWS rows" "200 $NROWS" "$(status_of "$r") $(body_of "$r" | jq -r '.results[1].response.result.affected_row_count')"
r=$(pipeline "$AGENT/t/cur/v2/pipeline" "$TOKEN" '{"requests":[{"type":"execute","stmt":{"sql":"select count(*) from big"}},{"type":"close"}]}')
POS=$(grep -i '^shoal-txid:' "$T_DIR/pheaders" | tr -d '\r' | awk '{print $2}')
like "position known after the load" '^[0-9a-f]{16}$' "$POS"

agent_pid() { local v="PID_agent_n2"; printf '%s' "${!v}"; }
client() { node "$CLIENT" "$1" "$CURSOR_URL" "$TOKEN" "$2" ${3:-}; }
healthy() {
    kill -0 "$(agent_pid)" 2>/dev/null || return 1
    local r; r=$(pipeline "$AGENT/t/cur/v2/pipeline" "$TOKEN" '{"requests":[{"type":"execute","stmt":{"sql":"select count(*) from big"}},{"type":"close"}]}')
    [ "$(status_of "$r") $(body_of "$r" | jq -r '.results[0].response.result.rows[0][0].value')" = "200 $NROWS" ]
}

# --- a big read-only cursor streams -------------------------------------------
echo "{\"baton\":null,\"batch\":{\"steps\":[{\"stmt\":{\"sql\":\"select id, v from big order by id\"}}]}}" >"$T_DIR/big.json"
out=$(client read "$T_DIR/big.json" "$(agent_pid)")
echo "# big cursor: $(jq -c 'del(.baton_line)' <<<"$out")"
is "big cursor: 200 text/plain" "200 text/plain" "$(jq -r '"\(.status) \(.content_type)"' <<<"$out")"
is "big cursor: chunked, no content-length" "chunked null" "$(jq -r '"\(.transfer_encoding) \(.content_length)"' <<<"$out")"
is "big cursor: shoal-txid is the position it read" "$POS" "$(jq -r .txid <<<"$out")"
like "big cursor: first line names a baton of n2" '^n2\.' "$(jq -r .baton_line.baton <<<"$out")"
is "big cursor: complete (last chunk received)" true "$(jq -r .complete <<<"$out")"
is "big cursor: entries" "1 $NROWS 1" "$(jq -r '"\(.types.step_begin) \(.types.row) \(.types.step_end)"' <<<"$out")"
is "big cursor: rows 1..$NROWS in order" "true $NROWS" "$(jq -r '"\(.ordered) \(.last_row)"' <<<"$out")"
is "big cursor: no partial line" 0 "$(jq -r .trailing <<<"$out")"
growth=$(jq -r '(.rss_peak_kib - .rss_before_kib) / 1024 | floor' <<<"$out")
echo "# agent RSS before $(jq -r '.rss_before_kib / 1024 | floor' <<<"$out") MiB, peak during the cursor $(jq -r '.rss_peak_kib / 1024 | floor' <<<"$out") MiB (+$growth MiB)"
if [ "$SCALE" -lt 100 ]; then ok "big cursor: RSS not checked under sanitizers (+$growth MiB; ASan keeps freed memory in quarantine) # SKIP"
elif [ "$growth" -lt 64 ]; then ok "big cursor: agent RSS grew by less than 64 MiB (+$growth MiB)"; else not_ok "big cursor: agent RSS grew by $growth MiB"; fi
# the baton of the cursor's stream works afterwards
cbaton=$(jq -r .baton_line.baton <<<"$out")
r=$(pipeline "$AGENT/t/cur/v3/pipeline" "$TOKEN" "{\"baton\":\"$cbaton\",\"requests\":[{\"type\":\"execute\",\"stmt\":{\"sql\":\"select 7\"}},{\"type\":\"close\"}]}")
is "big cursor: its baton continues the stream" "200 7" "$(status_of "$r") $(body_of "$r" | jq -r '.results[0].response.result.rows[0][0].value')"

# --- first entries arrive before the batch finishes --------------------------------
# Step 1 never ends by itself: it runs until the statement time limit,
# so the reply cannot be complete when step 0's step_end is read.
SLOW='{"baton":null,"batch":{"steps":[{"stmt":{"sql":"select id from big where id <= 3 order by id"}},{"stmt":{"sql":"with recursive c(x) as (select 1 union all select x+1 from c) select count(*) from c"}},{"stmt":{"sql":"select 1"}}]}}'
echo "$SLOW" >"$T_DIR/slow.json"
out=$(client early "$T_DIR/slow.json")
echo "# slow cursor: $(jq -c 'del(.baton_line)' <<<"$out")"
is "slow cursor: step 0's entries were read while the reply was still open" true "$(jq -r .open_at_first_step_end <<<"$out")"
is "slow cursor: entry types" "step_begin row row row step_end step_error step_begin row step_end" \
    "$(jq -r '.first_types | join(" ")' <<<"$out")"
is "slow cursor: step 1 stopped by the time limit" STMT_TIMEOUT "$(jq -r .last_error.code <<<"$out")"
first=$(jq -r .first_step_end_ms <<<"$out"); total=$(jq -r .total_ms <<<"$out")
if [ "$first" -lt 1000 ] && [ "$total" -ge $((LIMIT_MS * 8 / 10)) ]; then ok "slow cursor: step 0 after $first ms, reply done after $total ms"
else not_ok "slow cursor: step 0 after $first ms, reply done after $total ms"; fi

# --- a reader that pauses gets everything -----------------------------------------
out=$(client slow "$T_DIR/big.json")
is "paused reader: complete, all rows in order" "true $NROWS true" "$(jq -r '"\(.complete) \(.rows) \(.ordered)"' <<<"$out")"

# --- clients that go away -------------------------------------------------------
for i in 1 2 3; do
    out=$(client disconnect "$T_DIR/big.json")
    like "disconnect $i: client left mid-stream" '^[0-9]+$' "$(jq -r .disconnected_after_bytes <<<"$out")"
done
out=$(client drop "$T_DIR/slow.json")
is "drop: client left before the reply" true "$(jq -r .dropped <<<"$out")"
if wait_until 10 healthy; then ok "agent healthy after disconnects (alive, next request succeeds)"
else not_ok "agent not healthy after disconnects"; show_logs; fi
# the dropped slow cursor's worker stops at the time limit at the latest; then
# a cursor on the same tenant (same worker) is served again
out=$(client read "$T_DIR/big.json")
is "cursor after disconnects: complete" "true $NROWS" "$(jq -r '"\(.complete) \(.rows)"' <<<"$out")"

# --- write cursors stay buffered ----------------------------------------------------
WRITE='{"baton":null,"batch":{"steps":[{"stmt":{"sql":"insert into big(id, v) values (1000001, \u0027w\u0027)"}},{"stmt":{"sql":"select v from big where id = 1000001"}}]}}'
echo "$WRITE" >"$T_DIR/write.json"
out=$(client read "$T_DIR/write.json")
is "write cursor: buffered (content-length, no chunking)" "null true" "$(jq -r '"\(.transfer_encoding) \(.content_length != null)"' <<<"$out")"
is "write cursor: entries" "step_begin step_end step_begin row step_end" "$(jq -r '.first_types | join(" ")' <<<"$out")"
like "write cursor: shoal-txid moved past the load" '^[0-9a-f]{16}$' "$(jq -r .txid <<<"$out")"
[ "$(jq -r .txid <<<"$out")" != "$POS" ] && ok "write cursor: shoal-txid is the position after the write" || not_ok "write cursor: shoal-txid did not move"

if grep -q -E 'AddressSanitizer|runtime error|LeakSanitizer' "$T_DIR"/agent-n2.log; then
    not_ok "agent log has sanitizer reports"; grep -E -A20 'AddressSanitizer|runtime error|LeakSanitizer' "$T_DIR"/agent-n2.log | head -40 | sed 's/^/#   /'
else ok "agent log has no sanitizer reports"; fi
stop_daemon agent-n2; rc=$?
is "agent n2 stops cleanly" 0 "$rc"
if grep -q -E 'AddressSanitizer|LeakSanitizer' "$T_DIR"/agent-n2.log; then
    not_ok "agent shutdown has sanitizer reports"; grep -E -A30 'AddressSanitizer|LeakSanitizer' "$T_DIR"/agent-n2.log | head -40 | sed 's/^/#   /'
else ok "agent shutdown has no sanitizer reports"; fi
done_testing
