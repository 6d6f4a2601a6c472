// tests/integration/replication/workload.mjs: random write transactions for
// the replication tests, over Hrana HTTP (plain fetch, no client library).
//   node workload.mjs URL TOKEN COUNT [LEDGER_FILE]
// Every transaction inserts its number into `ledger`; acknowledged numbers
// are appended to LEDGER_FILE so a test can check that none was lost.
// The mix grows and shrinks the file, changes the schema, VACUUMs, and moves
// money between 100 accounts whose total stays 100000 (readers check it).
// Env: SEED (default 1), CONC (default 2), TOLERATE_ERRORS=1 (count failed
// requests instead of stopping: for tests that kill processes).
// Prints one JSON line: {"ok":N,"failed":N,"vacuums":N,"last_txid":"..."}.
import { appendFileSync } from "node:fs";

const [url, token, countArg, ledgerFile] = process.argv.slice(2);
const count = Number(countArg);
const conc = Number(process.env.CONC || 2);
const tolerate = process.env.TOLERATE_ERRORS === "1";
let seed = Number(process.env.SEED || 1) >>> 0;
// ledger numbers of different runs never collide
const ledgerBase = Number(process.env.LEDGER_BASE || seed * 1000000);
const rnd = (n) => {
  seed = (seed * 1664525 + 1013904223) >>> 0;
  return seed % n;
};

async function pipeline(stmts) {
  const requests = stmts.map((s) => ({ type: "execute", stmt: typeof s === "string" ? { sql: s } : s }));
  requests.push({ type: "close" });
  const res = await fetch(`${url}/v2/pipeline`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ baton: null, requests }),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${text.slice(0, 300)}`);
  const body = JSON.parse(text);
  for (const r of body.results) if (r.type !== "ok") throw new Error(JSON.stringify(r.error));
  return { body, txid: res.headers.get("shoal-txid") };
}

function txnFor(n) {
  const s = ["BEGIN"];
  const op = rnd(100);
  if (op < 30) {
    const a = 1 + rnd(100), b = 1 + rnd(100), x = rnd(50);
    s.push(`UPDATE acct SET bal = bal - ${x} WHERE id = ${a}`, `UPDATE acct SET bal = bal + ${x} WHERE id = ${b}`);
  } else if (op < 55) {
    for (let k = 1 + rnd(4); k > 0; k--) s.push(`INSERT INTO blobs(b) VALUES (randomblob(${1 + rnd(9000)}))`);
  } else if (op < 70) {
    s.push(`UPDATE blobs SET b = randomblob(${1 + rnd(5000)}) WHERE id % 7 = ${rnd(7)} AND id > (SELECT max(id) FROM blobs) - 40`);
  } else if (op < 80) {
    s.push(`DELETE FROM blobs WHERE id % ${2 + rnd(3)} = 0 AND id < (SELECT max(id) FROM blobs) - 5`);
  } else if (op < 85) {
    const t = `t${rnd(5)}`;
    const kind = rnd(4);
    if (kind === 0) s.push(`CREATE TABLE IF NOT EXISTS ${t}(a INTEGER PRIMARY KEY, b TEXT)`, `INSERT INTO ${t}(b) SELECT hex(randomblob(200)) FROM acct LIMIT ${1 + rnd(50)}`);
    else if (kind === 1) s.push(`DROP TABLE IF EXISTS ${t}`);
    else if (kind === 2) s.push(`CREATE TABLE IF NOT EXISTS ${t}(a INTEGER PRIMARY KEY, b TEXT)`, `CREATE INDEX IF NOT EXISTS ${t}_b ON ${t}(b)`);
    else s.push(`CREATE TABLE IF NOT EXISTS ${t}(a INTEGER PRIMARY KEY, b TEXT)`, `ALTER TABLE ${t} ADD COLUMN c${n} INTEGER DEFAULT ${n}`);
  }
  s.push({ sql: "INSERT INTO ledger(n) VALUES (?)", args: [{ type: "integer", value: String(ledgerBase + n) }] }, "COMMIT");
  return s;
}

let ok = 0, failed = 0, vacuums = 0, lastTxid = null, next = 0, fatal = null;
async function worker() {
  while (fatal === null) {
    const n = next++;
    if (n >= count) return;
    try {
      if (n > 0 && n % 250 === 0) {
        await pipeline(["VACUUM"]);
        vacuums++;
      }
      const { txid } = await pipeline(txnFor(n));
      ok++;
      lastTxid = txid;
      if (ledgerFile) appendFileSync(ledgerFile, `${ledgerBase + n}\n`);
    } catch (e) {
      failed++;
      if (!tolerate) fatal = e;
      else await new Promise((r) => setTimeout(r, 50));
    }
  }
}

const schema = [
  "CREATE TABLE IF NOT EXISTS acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)",
  "CREATE TABLE IF NOT EXISTS blobs(id INTEGER PRIMARY KEY, b BLOB)",
  "CREATE TABLE IF NOT EXISTS ledger(n INTEGER PRIMARY KEY)",
  "INSERT OR IGNORE INTO acct(id, bal) WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100) SELECT i, 1000 FROM c",
];
// the schema step is idempotent: under TOLERATE_ERRORS it is retried (a
// tenant between primaries answers 503) instead of ending the run
for (let attempt = 0; ; attempt++) {
  try {
    await pipeline(schema);
    break;
  } catch (e) {
    if (!tolerate || attempt >= 100) throw e;
    failed++;
    await new Promise((r) => setTimeout(r, 50));
  }
}
await Promise.all(Array.from({ length: conc }, worker));
console.log(JSON.stringify({ ok, failed, vacuums, last_txid: lastTxid, error: fatal ? String(fatal) : undefined }));
process.exit(fatal ? 1 : 0);
