// Interop: the real @libsql/client (pinned in package.json) against a Shoal
// cluster started by run.sh. SHOAL_TEST_URLS lists the base URLs to test
// (router and agent), SHOAL_TEST_TOKEN/RO_TOKEN/OTHER_TOKEN the tokens.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createClient, LibsqlError } from "@libsql/client";

const urls = process.env.SHOAL_TEST_URLS.split(",");
const token = process.env.SHOAL_TEST_TOKEN;
const roToken = process.env.SHOAL_TEST_RO_TOKEN;
const otherToken = process.env.SHOAL_TEST_OTHER_TOKEN;

for (const url of urls) {
  const where = url.includes(process.env.SHOAL_TEST_ROUTER) ? "router" : "agent";
  const db = createClient({ url, authToken: token });
  const big = createClient({ url, authToken: token, intMode: "bigint" });
  const table = `t_${where}`;

  test(`${where}: execute returns rows and columns`, async () => {
    const rs = await db.execute("select 40+2 as answer, 'x' as s");
    assert.deepEqual(rs.columns, ["answer", "s"]);
    assert.equal(rs.rows[0].answer, 42);
    assert.equal(rs.rows[0][1], "x");
  });

  test(`${where}: every value type round-trips`, async () => {
    await db.execute(`create table if not exists ${table} (id integer primary key, i integer, f real, s text, b blob, n)`);
    await db.execute(`delete from ${table}`);
    const blob = new Uint8Array([0, 1, 2, 255]);
    const ins = await db.execute({
      sql: `insert into ${table} (i, f, s, b, n) values (?, ?, ?, ?, ?)`,
      args: [7, 1.5, "héllo ☃", blob, null],
    });
    assert.equal(ins.rowsAffected, 1);
    assert.equal(typeof ins.lastInsertRowid, "bigint");
    const rs = await db.execute(`select i, f, s, b, n from ${table}`);
    const r = rs.rows[0];
    assert.equal(r.i, 7);
    assert.equal(r.f, 1.5);
    assert.equal(r.s, "héllo ☃");
    assert.deepEqual(new Uint8Array(r.b), blob);
    assert.equal(r.n, null);
  });

  test(`${where}: int64 edges survive with intMode bigint`, async () => {
    const rs = await big.execute({
      sql: "select ? as lo, ? as hi, 9223372036854775807 as lit",
      args: [-9223372036854775808n, 9223372036854775807n],
    });
    assert.equal(rs.rows[0].lo, -9223372036854775808n);
    assert.equal(rs.rows[0].hi, 9223372036854775807n);
    assert.equal(rs.rows[0].lit, 9223372036854775807n);
  });

  test(`${where}: named arguments with and without prefixes`, async () => {
    const rs = await db.execute({ sql: "select :a as a, @b as b, $c as c", args: { a: 1, b: "two", c: null } });
    assert.deepEqual([rs.rows[0].a, rs.rows[0].b, rs.rows[0].c], [1, "two", null]);
  });

  test(`${where}: batch in write mode commits`, async () => {
    await db.batch([`delete from ${table}`, { sql: `insert into ${table} (i) values (?)`, args: [1] },
                    { sql: `insert into ${table} (i) values (?)`, args: [2] }], "write");
    const rs = await db.execute(`select count(*) as c from ${table}`);
    assert.equal(rs.rows[0].c, 2);
  });

  test(`${where}: a failing statement rolls the whole batch back`, async () => {
    await assert.rejects(
      db.batch([{ sql: `insert into ${table} (i) values (?)`, args: [3] }, "select * from no_such_table"], "write"),
      (e) => e instanceof LibsqlError);
    const rs = await db.execute(`select count(*) as c from ${table}`);
    assert.equal(rs.rows[0].c, 2);
  });

  test(`${where}: batch in read and deferred modes`, async () => {
    const [a] = await db.batch([`select count(*) as c from ${table}`], "read");
    assert.equal(a.rows[0].c, 2);
    const [b] = await db.batch([`select count(*) as c from ${table}`], "deferred");
    assert.equal(b.rows[0].c, 2);
  });

  test(`${where}: interactive transaction commits`, async () => {
    const tx = await db.transaction("write");
    await tx.execute({ sql: `insert into ${table} (i) values (?)`, args: [10] });
    const inside = await tx.execute(`select count(*) as c from ${table}`);
    assert.equal(inside.rows[0].c, 3);
    await tx.commit();
    const rs = await db.execute(`select count(*) as c from ${table}`);
    assert.equal(rs.rows[0].c, 3);
  });

  test(`${where}: interactive transaction rolls back`, async () => {
    const tx = await db.transaction("write");
    await tx.execute({ sql: `insert into ${table} (i) values (?)`, args: [11] });
    await tx.rollback();
    const rs = await db.execute(`select count(*) as c from ${table}`);
    assert.equal(rs.rows[0].c, 3);
  });

  test(`${where}: executeMultiple and migrate`, async () => {
    await db.executeMultiple(`create table if not exists m_${where}(x); insert into m_${where} values (1); insert into m_${where} values (2);`);
    await db.migrate([`create table if not exists g_${where}(y)`, `insert into g_${where} values (5)`]);
    const rs = await db.execute(`select (select count(*) from m_${where}) as m, (select sum(y) from g_${where}) as g`);
    assert.ok(rs.rows[0].m >= 2);
    assert.ok(rs.rows[0].g >= 5);
  });

  test(`${where}: constraint and syntax errors surface as LibsqlError with codes`, async () => {
    await db.execute(`create table if not exists u_${where}(id integer primary key)`);
    await db.execute(`insert or ignore into u_${where} values (1)`);
    await assert.rejects(db.execute(`insert into u_${where} values (1)`),
      (e) => e instanceof LibsqlError && /^SQLITE_CONSTRAINT/.test(e.code));
    await assert.rejects(db.execute("selec 1"), (e) => e instanceof LibsqlError && typeof e.code === "string");
  });

  test(`${where}: a read-only token reads but cannot write`, async () => {
    const ro = createClient({ url, authToken: roToken });
    const rs = await ro.execute(`select count(*) as c from ${table}`);
    assert.equal(rs.rows[0].c, 3);
    await assert.rejects(ro.execute(`insert into ${table} (i) values (99)`), (e) => e instanceof LibsqlError);
  });

  test(`${where}: a bad or foreign token is refused`, async () => {
    const bad = createClient({ url, authToken: token.slice(0, -2) + "xx" });
    await assert.rejects(bad.execute("select 1"), (e) => e instanceof LibsqlError && e.code === "UNAUTHORIZED");
    const foreign = createClient({ url, authToken: otherToken });
    await assert.rejects(foreign.execute("select 1"), (e) => e instanceof LibsqlError && e.code === "FORBIDDEN" &&
      /stranger/.test(e.message));
  });
}
