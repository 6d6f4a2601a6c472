// ops/bench/repl_load.mjs: write load for ops/bench/replication.
//   node repl_load.mjs TARGETS_JSON RATE DURATION_S CONCURRENCY
// TARGETS_JSON: a file holding [{"url": ".../t/<id>", "token": "..."}, ...].
// RATE > 0: open loop, one single-row insert every 1/RATE s, spread round-robin
// over the targets, at most CONCURRENCY in flight (a tick with all slots busy
// is counted as "late", not queued). RATE = 0: closed loop, CONCURRENCY
// workers sending back to back. Prints one JSON line (cpu_us: this process's
// own CPU time, so the bench can tell what the load generator took).
import http from "node:http";
import { readFileSync } from "node:fs";

const [file, rateArg, durArg, concArg] = process.argv.slice(2);
const targets = JSON.parse(readFileSync(file, "utf8"));
const rate = Number(rateArg), duration = Number(durArg) * 1000, conc = Number(concArg);
const agent = new http.Agent({ keepAlive: true, maxSockets: conc });
const body = JSON.stringify({
  requests: [{ type: "execute", stmt: { sql: "INSERT INTO kv(v) VALUES (randomblob(100))" } }, { type: "close" }],
});
let ok = 0, errors = 0, late = 0, inflight = 0, next = 0;
const lat = [];

function send() {
  const t = targets[next++ % targets.length];
  const u = new URL(`${t.url}/v2/pipeline`);
  const start = process.hrtime.bigint();
  inflight++;
  return new Promise((resolve) => {
    const req = http.request(
      { host: u.hostname, port: u.port, path: u.pathname, method: "POST", agent,
        headers: { authorization: `Bearer ${t.token}`, "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
      (res) => {
        let text = "";
        res.on("data", (c) => (text += c));
        res.on("end", () => {
          inflight--;
          if (res.statusCode === 200 && text.includes('"type":"ok"') && !text.includes('"type":"error"')) {
            ok++;
            lat.push(Number(process.hrtime.bigint() - start) / 1e6);
          } else errors++;
          resolve();
        });
      });
    req.on("error", () => { inflight--; errors++; resolve(); });
    req.end(body);
  });
}

const t0 = Date.now();
if (rate > 0) {
  const interval = 1000 / rate;
  let due = 0;
  await new Promise((done) => {
    const tick = () => {
      const now = Date.now() - t0;
      if (now >= duration) return done();
      while (due <= now) {
        if (inflight < conc) send(); else late++;
        due += interval;
      }
      setTimeout(tick, Math.max(0, Math.min(5, due - now)));
    };
    tick();
  });
  while (inflight > 0) await new Promise((r) => setTimeout(r, 5));
} else {
  await Promise.all(Array.from({ length: conc }, async () => {
    while (Date.now() - t0 < duration) await send();
  }));
}
const secs = (Date.now() - t0) / 1000;
lat.sort((a, b) => a - b);
const pct = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(lat.length * p))] : 0);
const cpu = process.cpuUsage();
console.log(JSON.stringify({ ok, errors, late, rate: ok / secs, p50_ms: pct(0.5), p99_ms: pct(0.99), cpu_us: cpu.user + cpu.system }));
process.exit(0);
