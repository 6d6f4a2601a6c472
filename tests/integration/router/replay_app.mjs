// A small web app written for Fly.io's proxy, used to prove that shoal-router
// fronts ordinary apps (--app) and follows their own fly-replay answers, the
// way Fly.io's LiteFS example app behaves:
//   - `?region=X` on an instance outside X answers `fly-replay: region=X`;
//   - a POST on an instance that is not the primary answers
//     `fly-replay: instance=<primary>` (writes go to the primary);
//   - GET /replay?to=<value> answers `fly-replay: <value>` unless the request
//     is itself a replay (fly-replay-src) or a failed one (fly-replay-failed);
//   - GET /loop always answers `fly-replay: elsewhere=true`.
// Every served answer is JSON naming the instance and the replay headers it
// saw, so tests assert on data. With --fake-agent it instead plays a Shoal
// agent that echoes the request headers it received (for the router's own
// request headers: shoal-accept-replay, shoal-client-region).
//
// GET /big?bytes=N[&chunked=1] answers N bytes of 'x' with content-length, or
// chunked (no length, written in 64 KiB pieces). --keepalive-ms sets how long
// an idle connection stays open (default 30 s). A fake agent answers
// GET /healthz 200, or with --lagging TENANT 503 listing TENANT as lagging,
// in the shape of nodeagent's /healthz.
//
// usage: node replay_app.mjs --port P --instance ID --region R --primary ID [--fake-agent [--lagging T]]
//        [--keepalive-ms MS]
import http from "node:http";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1] && !all[i + 1].startsWith("--") ? all[i + 1] : "1"]);
    return acc;
  }, []),
);
const port = Number(args.port);
const me = args.instance;
const region = args.region;
const primary = args.primary;
let items = 0;
let conns = 0; // TCP connections accepted: shows the router keeps its upstream connections alive

function reply(res, status, obj, headers = {}) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body), ...headers });
  res.end(body);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const url = new URL(req.url, "http://x");
    const seen = {
      instance: me,
      region,
      method: req.method,
      path: url.pathname,
      body_len: body.length,
      src: req.headers["fly-replay-src"] ?? null,
      failed: req.headers["fly-replay-failed"] ?? null,
      fly_region: req.headers["fly-region"] ?? null,
      conns,
    };
    if (url.pathname === "/big") {
      const n = Number(url.searchParams.get("bytes") ?? 0);
      const piece = Buffer.alloc(65536, "x");
      if (url.searchParams.get("chunked")) {
        res.writeHead(200, { "content-type": "application/octet-stream" });
        for (let left = n; left > 0; left -= piece.length) res.write(left >= piece.length ? piece : piece.subarray(0, left));
        res.end();
      } else {
        res.writeHead(200, { "content-type": "application/octet-stream", "content-length": n });
        res.end(Buffer.alloc(n, "x"));
      }
      return;
    }
    if (args["fake-agent"] && url.pathname === "/healthz") {
      if (args.lagging)
        reply(res, 503, { status: "degraded", node: me, region, session: "ok", lagging: [{ tenant: args.lagging, lag_ms: 9000 }] });
      else reply(res, 200, { status: "ok", node: me, region, session: "ok", lagging: [] });
      return;
    }
    if (args["fake-agent"]) {
      reply(res, 200, { ...seen, headers: req.headers }, { "shoal-txid": "000000000000002a" });
      return;
    }
    const replayed = seen.src !== null || seen.failed !== null;
    const want = url.searchParams.get("region");
    if (want && want !== region && !replayed) {
      reply(res, 409, { ignored: true }, { "fly-replay": `region=${want}` });
      return;
    }
    if (url.pathname === "/loop") {
      reply(res, 200, {}, { "fly-replay": "elsewhere=true" });
      return;
    }
    if (url.pathname === "/replay") {
      if (!replayed) {
        reply(res, 200, { ignored: true }, { "fly-replay": url.searchParams.get("to") ?? "" });
        return;
      }
      reply(res, 200, seen);
      return;
    }
    if (req.method === "POST" && me !== primary) {
      // LiteFS-style: writes are only possible on the primary
      reply(res, 200, { ignored: true }, { "fly-replay": `instance=${primary}` });
      return;
    }
    if (req.method === "POST") items++;
    reply(res, 200, { ...seen, items });
  });
});
server.on("connection", () => conns++);
server.keepAliveTimeout = Number(args["keepalive-ms"] ?? 30000);
server.listen(port, "127.0.0.1");
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
