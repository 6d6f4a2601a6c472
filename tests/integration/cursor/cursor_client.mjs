// tests/integration/cursor/cursor_client.mjs: a streaming /v3/cursor client
// for cursor.sh, on node's own http module (no dependencies).
//
// usage: node cursor_client.mjs MODE URL TOKEN BODY_FILE [PID]
// Prints one JSON object with what it saw. Modes:
//   read        read the whole reply; report status, headers, entry counts,
//               whether rows came in order, and (with PID) the agent's peak
//               RSS sampled while the reply was open
//   early       read until the first step's step_end arrives, note whether
//               the reply was still open then (res.complete false, no 'end'),
//               then read the rest
//   slow        stop reading for 1.5 s after the first data, then read it all
//   disconnect  read about 256 KiB, then destroy the socket
//   drop        send the request and close the socket before any reply
import http from 'node:http';
import fs from 'node:fs';

const [mode, url, token, bodyFile, pid] = process.argv.slice(2);
const body = fs.readFileSync(bodyFile);
const t0 = Date.now();
const out = { mode };

function rssKiB() {
    try {
        const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
        return m ? Number(m[1]) : 0;
    } catch { return 0; }
}
let peak = 0, sampler = null, leaving = false;
if (pid) {
    out.rss_before_kib = rssKiB();
    sampler = setInterval(() => { peak = Math.max(peak, rssKiB()); }, 10);
}

const req = http.request(url, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    agent: false,
});
req.on('error', (e) => {
    if (leaving || mode === 'drop') return;
    finish({ error: String(e) });
});

function finish(extra) {
    if (sampler) { clearInterval(sampler); out.rss_peak_kib = Math.max(peak, rssKiB()); }
    Object.assign(out, extra, { total_ms: Date.now() - t0 });
    console.log(JSON.stringify(out));
    process.exit(0);
}

if (mode === 'drop') {
    req.on('socket', (s) => s.on('connect', () => setTimeout(() => { s.destroy(); finish({ dropped: true }); }, 20)));
    req.end(body);
} else {
    req.end(body);
    req.on('response', (res) => {
        out.status = res.statusCode;
        out.content_type = res.headers['content-type'];
        out.transfer_encoding = res.headers['transfer-encoding'] || null;
        out.content_length = res.headers['content-length'] || null;
        out.txid = res.headers['shoal-txid'] || null;
        let buf = '', bytes = 0, lines = 0, rows = 0, ordered = true, last = 0, ended = false, paused = false;
        const types = {}, firstTypes = [];
        res.on('data', (chunk) => {
            bytes += chunk.length;
            out.chunks = (out.chunks || 0) + 1;
            if (mode === 'disconnect' && bytes >= 256 * 1024) {
                leaving = true;
                res.destroy();
                req.destroy();
                finish({ disconnected_after_bytes: bytes });
                return;
            }
            if (mode === 'slow' && !paused) {
                paused = true;
                res.pause();
                setTimeout(() => res.resume(), 1500);
            }
            buf += chunk.toString('utf8');
            let nl;
            while ((nl = buf.indexOf('\n')) >= 0) {
                const line = buf.slice(0, nl);
                buf = buf.slice(nl + 1);
                lines++;
                if (lines === 1) { out.baton_line = JSON.parse(line); continue; }
                const e = JSON.parse(line);
                types[e.type] = (types[e.type] || 0) + 1;
                if (firstTypes.length < 12) firstTypes.push(e.type);
                if (e.type === 'row') {
                    rows++;
                    const v = Number(e.row[0].value);
                    if (v !== last + 1) ordered = false;
                    last = v;
                }
                if (e.type === 'step_error' || e.type === 'error') out.last_error = e.error;
                if (mode === 'early' && e.type === 'step_end' && e.step === undefined && out.first_step_end_ms === undefined) {
                    out.first_step_end_ms = Date.now() - t0;
                    out.open_at_first_step_end = !res.complete && !ended;
                }
            }
        });
        res.on('end', () => {
            ended = true;
            finish({ complete: res.complete, bytes, lines, rows, ordered, last_row: last, types, first_types: firstTypes,
                     trailing: buf.length });
        });
        res.on('aborted', () => { if (!leaving) finish({ aborted: true, bytes, lines, rows }); });
    });
}
