#!/usr/bin/env bash
# Starts a real cluster (tests/integration/lib/cluster.sh), creates a tenant,
# and runs the @libsql/client interop tests against the router and an agent.
# usage: run.sh BUILD_DIR SOURCE_DIR
BUILD=$1 SRC=$2
. "$SRC/tests/integration/lib/cluster.sh"
if [ ! -d "$SRC/tests/interop/node_modules/@libsql/client" ]; then
    echo "Bail out! @libsql/client is not installed: run ops/deps (npm ci in tests/interop)"
    exit 1
fi
start_cluster 5
r=$(admin POST /v1/tenants '{"id":"interop","region":"ams"}')
[ "$(status_of "$r")" = 201 ] || { echo "Bail out! cannot create tenant: $r"; show_logs; exit 1; }
admin POST /v1/tenants '{"id":"stranger","region":"sin"}' >/dev/null
primary_url=$(body_of "$r" | jq -r .primary.url)
export SHOAL_TEST_TOKEN=$(admin POST /v1/tenants/interop/tokens '{"access":"rw"}' | cut -d' ' -f2- | jq -r .token)
export SHOAL_TEST_RO_TOKEN=$(admin POST /v1/tenants/interop/tokens '{"access":"ro"}' | cut -d' ' -f2- | jq -r .token)
export SHOAL_TEST_OTHER_TOKEN=$(admin POST /v1/tenants/stranger/tokens '{}' | cut -d' ' -f2- | jq -r .token)
export SHOAL_TEST_ROUTER=$ROUTER_URL
export SHOAL_TEST_URLS="$ROUTER_URL/t/interop/,$primary_url/t/interop/"
cd "$SRC/tests/interop"
node --test --test-reporter=tap client.test.mjs
rc=$?
[ $rc -eq 0 ] || show_logs
exit $rc
