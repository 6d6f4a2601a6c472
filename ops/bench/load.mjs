// ops/bench/load.mjs: a small closed-loop HTTP load generator for the bench
// scripts (Node's fetch, keep-alive). Prints one JSON line:
//   {"n":..., "ok":..., "seconds":..., "rate":..., "p50_ms":..., "p99_ms":...}
// usage: node load.mjs URL CONCURRENCY COUNT [HEADER=VALUE ...] < body-template
// The body template may contain {i} (the request number) and {t} (i mod 1000).
import { readFileSync } from "node:fs";

const [url, conc, count, ...hdrs] = process.argv.slice(2);
const headers = { "content-type": "application/json" };
for (const h of hdrs) { const k = h.indexOf("="); headers[h.slice(0, k)] = h.slice(k + 1); }
const template = readFileSync(0, "utf8");
const method = process.env.METHOD || "POST";
const n = Number(count);
const lat = [];
let next = 0, ok = 0;
const t0 = performance.now();
async function worker() {
  for (;;) {
    const i = next++;
    if (i >= n) return;
    const body = template.replaceAll("{i}", String(i)).replaceAll("{t}", String(i % 1000));
    const u = url.replaceAll("{i}", String(i)).replaceAll("{t}", String(i % 1000));
    const s = performance.now();
    const r = await fetch(u, method === "GET" ? { headers } : { method, headers, body });
    await r.arrayBuffer();
    lat.push(performance.now() - s);
    if (r.status < 300) ok++;
  }
}
await Promise.all(Array.from({ length: Number(conc) }, worker));
const secs = (performance.now() - t0) / 1000;
lat.sort((a, b) => a - b);
const q = (p) => lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : 0;
console.log(JSON.stringify({ n, ok, seconds: +secs.toFixed(3), rate: +(n / secs).toFixed(1),
  p50_ms: +q(0.5).toFixed(2), p99_ms: +q(0.99).toFixed(2) }));
