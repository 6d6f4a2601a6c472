// tests/integration/placement/alternate.mjs: writes that alternate, request
// by request, between agents in different regions, so every slice of the
// placement window sees the same count from each.
//   node alternate.mjs SECONDS TOKEN URL...     (URL: an agent's /t/<tenant>)
// Prints {"ok":N,"failed":N,"by_url":[...]}, and the first failure's
// status and body (or error) as "first_error" when there was one.
const [secs, token, ...urls] = process.argv.slice(2);
const end = Date.now() + Number(secs) * 1000;
const byUrl = urls.map(() => 0);
let ok = 0, failed = 0, firstError;
async function write(url, sql) {
  const res = await fetch(`${url}/v2/pipeline`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ requests: [{ type: "execute", stmt: { sql } }, { type: "close" }] }),
  });
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch { body = undefined; }
  const good = res.status === 200 && body?.results?.[0]?.type === "ok";
  if (!good && firstError === undefined) firstError = `${url}: ${res.status} ${text.slice(0, 300)}`;
  return good;
}
await write(urls[0], "CREATE TABLE IF NOT EXISTS alt(id INTEGER PRIMARY KEY, at INTEGER)");
// The table is made through the first URL, so the alternation starts with the
// second: at no point does one region lead by more than one write (a window
// of ten writes split 6:4 would already be a 20 % gain for iad).
for (let i = 1; Date.now() < end; i++) {
  const k = i % urls.length;
  try {
    if (await write(urls[k], `INSERT INTO alt(at) VALUES (${Date.now()})`)) { ok++; byUrl[k]++; } else failed++;
  } catch (e) {
    failed++;
    if (firstError === undefined) firstError = `${urls[k]}: ${e.cause?.code ?? e.message}`;
  }
}
console.log(JSON.stringify({ ok, failed, by_url: byUrl, ...(firstError === undefined ? {} : { first_error: firstError }) }));
