'use strict';
// Turns the loadgen JSON lines of one scripts/bench.sh run into the
// Markdown tables of scripts/bench/results.md.
// Usage: node report.js RAW.jsonl [p99-limit-ms]

const fs = require('fs');

const [file, limitArg] = process.argv.slice(2);
const p99Limit = Number(limitArg || 50);
const runs = fs
  .readFileSync(file, 'utf8')
  .split('\n')
  .filter((l) => l.trim().startsWith('{'))
  .map((l) => JSON.parse(l));

const SERVERS = ['livecast', 'tokio-ref', 'node-ref'];
const order = (a, b) => SERVERS.indexOf(a) - SERVERS.indexOf(b);
const byScenario = (name) => runs.filter((r) => r.scenario === name);
const servers = (list) => [...new Set(list.map((r) => r.server_name))].sort(order);

const fmt = (v, digits = 0) => {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (typeof v !== 'number') return String(v);
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
};
const ms = (v) => fmt(v, v !== null && v !== undefined && v < 10 ? 2 : 1);
const table = (head, rows) => {
  const out = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) out.push(`| ${r.join(' | ')} |`);
  return out.join('\n') + '\n';
};
const codes = (obj) => {
  const entries = Object.entries(obj || {});
  return entries.length ? entries.map(([k, v]) => `${k}×${v}`).join(' ') : '';
};
const closed = (r) => {
  const n = r.server_closed.total;
  return n ? `${n} (${codes(r.server_closed.codes)})` : '0';
};
const failures = (r) => {
  const n = Object.values(r.connect.failures).reduce((a, b) => a + b, 0);
  return n ? `${n} (${codes(r.connect.failures)})` : '0';
};
// Why a load run is not clean.
const why = (r) => {
  const reasons = [];
  if (r.latency_ms.p99 > p99Limit) reasons.push(`p99 ${ms(r.latency_ms.p99)} ms`);
  if (r.lost) reasons.push(`${fmt(r.lost)} lost`);
  if (r.duplicates) reasons.push(`${fmt(r.duplicates)} dup`);
  if (r.reordered) reasons.push(`${fmt(r.reordered)} reordered`);
  if (r.server_closed.total) reasons.push(`${closed(r)} closed`);
  const f = Object.values(r.connect.failures).reduce((a, b) => a + b, 0);
  if (f) reasons.push(`${f} failed to connect`);
  if (Object.keys(r.posts.errors).length || r.posts.rejected) reasons.push('ingest errors');
  if (r.mode !== 'idle' && r.posts.end_lag_ms > p99Limit) {
    reasons.push(`posting ${ms(r.posts.end_lag_ms)} ms behind schedule at the end`);
  }
  if (r.loadgen.saturated) reasons.push('loadgen saturated');
  return reasons.join(', ') || 'clean';
};

let md = '';

// Fixed-rate runs (issue 13), one position per POST: the small fleet and
// 1,000 clients at 25 and at 100 POSTs/s.
const FIXED = ['small-fleet', 'fanout-25', 'fanout-100'];
const fixed = FIXED.flatMap((name) => byScenario(name));
if (fixed.length) {
  md += '### Fixed rates, one position per POST\n\n';
  md += 'Every position in its own POST, as trackers report, one event; a fresh server per run. ';
  md += 'Server CPU is over the posting window; latency from the POST to each delivery.\n\n';
  const rows = [];
  for (const name of FIXED) {
    const runs = byScenario(name).sort((a, b) => order(a.server_name, b.server_name));
    for (const r of runs) {
      const p = r.params;
      rows.push([
        `${name}: ${fmt(p.clients)} clients, ${fmt(p.devices)} devices, ${fmt(p.posts_per_s)} POSTs/s, ${p.duration_s} s`,
        `**${r.server_name}**`,
        `**${fmt(r.server.cpu_pct, 0)}**`,
        ms(r.latency_ms.p50),
        `**${ms(r.latency_ms.p99)}**`,
        ms(r.latency_ms.max),
        `${fmt(r.lost)} / ${fmt(r.duplicates)} / ${closed(r)}`,
        fmt(r.deliveries_per_s),
        fmt(r.server.cpu_us_per_delivery, 2),
        fmt(r.loadgen.cpu_pct_per_thread, 0),
        why(r),
      ]);
    }
  }
  md += table(
    ['scenario', 'server', 'server CPU %', 'p50 ms', 'p99 ms', 'max ms', 'lost / dup / closed', 'deliveries/s', 'CPU-µs / delivery', 'loadgen CPU %', 'verdict'],
    rows,
  );
  md += '\n';
}

// Fan-out ramps: `ramp-single` posts one position per POST, `ramp` a fixed
// number of POSTs a second with batches growing with the rate.
const rampSection = (ramp, title, posting) => {
  const p = ramp[0].params;
  md += `### ${title}\n\n${fmt(p.clients)} clients on one event, ${fmt(p.devices)} devices, `;
  md += `${p.duration_s} s per step, ${posting(p)}; `;
  md += `the rate doubles until a step is not clean (p99 > ${p99Limit} ms, or anything lost, duplicated, `;
  md += 'reordered or closed), then bisects between the last clean and the first unclean rate.\n\n';
  const rows = [];
  for (const s of servers(ramp)) {
    const steps = ramp.filter((r) => r.server_name === s);
    const clean = steps.filter((r) => r.clean).sort((a, b) => b.deliveries_per_s - a.deliveries_per_s);
    const best = clean[0];
    const bad = steps.filter((r) => !r.clean).sort((a, b) => a.params.rate - b.params.rate)[0];
    rows.push([
      `**${s}**`,
      best ? `**${fmt(best.deliveries_per_s)}**` : 'none',
      best ? fmt(best.params.rate) : '–',
      best ? ms(best.latency_ms.p99) : '–',
      best ? `**${fmt(best.server.cpu_us_per_delivery, 2)}**` : '–',
      best ? fmt(best.server.cpu_pct, 0) : '–',
      bad ? `${fmt(bad.params.rate)}/s: ${why(bad)}` : 'none (ramp ended)',
    ]);
  }
  md += table(
    ['server', 'highest clean deliveries/s', 'at positions/s', 'p99 ms', 'server CPU-µs / delivery', 'server CPU %', 'first unclean step'],
    rows,
  );
  md += '\n<details><summary>every step</summary>\n\n';
  const stepRows = ramp.map((r) => [
    r.server_name,
    fmt(r.params.rate),
    fmt(r.deliveries_per_s),
    ms(r.latency_ms.p50),
    ms(r.latency_ms.p99),
    ms(r.latency_ms.max),
    fmt(r.lost),
    closed(r),
    fmt(r.server.cpu_us_per_delivery, 2),
    fmt(r.server.cpu_pct, 0),
    fmt(r.loadgen.cpu_pct_per_thread, 0),
    why(r),
  ]);
  md += table(
    ['server', 'positions/s', 'deliveries/s', 'p50 ms', 'p99 ms', 'max ms', 'lost', 'closed', 'CPU-µs/delivery', 'server CPU %', 'loadgen CPU %', 'verdict'],
    stepRows,
  );
  md += '\n</details>\n\n';
};
const single = byScenario('ramp-single');
if (single.length) {
  rampSection(single, 'Fan-out ramp, one position per POST', () =>
    'every position posted in its own POST (POSTs/s = positions/s), as trackers report');
}
const batched = byScenario('ramp');
if (batched.length) {
  // A step's POST rate is rate / ceil(rate / N): N once the rate reaches N.
  const n = Math.max(...batched.map((r) => r.params.posts_per_s));
  rampSection(batched, 'Fan-out ramp, batched', () =>
    `positions posted in batches of ⌈rate/${fmt(n)}⌉, so ${fmt(n)} POSTs a second whatever the rate ` +
    `(as many as positions below ${fmt(n)}/s)`);
}

// Many events.
const many = byScenario('many-events');
if (many.length) {
  const p = many[0].params;
  md += `### Many events\n\n${fmt(p.clients)} clients over ${p.events} events, ${fmt(p.devices)} devices, `;
  md += `${fmt(p.rate)} positions/s for ${p.duration_s} s; ${p.probes} probe clients keep subscribing and `;
  md += 'unsubscribing meanwhile (time to the first byte of `subscribed`).\n\n';
  md += table(
    ['server', 'deliveries/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'lost / dup / reordered', 'closed', 'subscribe answered under load, p99 ms (max)', 'server CPU-µs / delivery', 'server CPU %'],
    many.sort((a, b) => order(a.server_name, b.server_name)).map((r) => [
      `**${r.server_name}**`,
      fmt(r.deliveries_per_s),
      ms(r.latency_ms.p50),
      ms(r.latency_ms.p99),
      ms(r.latency_ms.p999),
      ms(r.latency_ms.max),
      `${fmt(r.lost)} / ${fmt(r.duplicates)} / ${fmt(r.reordered)}`,
      closed(r),
      r.probes ? `${ms(r.probes.first_byte_ms.p99)} (${ms(r.probes.first_byte_ms.max)})` : '–',
      fmt(r.server.cpu_us_per_delivery, 2),
      fmt(r.server.cpu_pct, 0),
    ]),
  );
  md += '\n';
}

// Idle.
const idle = byScenario('idle');
if (idle.length) {
  const p = idle[0].params;
  md += `### Idle\n\n${fmt(p.clients)} subscribed clients held open for ${p.duration_s} s, no traffic. `;
  md += 'RSS per connection = (RSS at the end of the hold − RSS of the fresh server) / clients.\n\n';
  md += table(
    ['server', 'subscribed', 'RSS fresh KiB', 'RSS held KiB', 'KiB per connection', 'CPU % of a core while idle', 'all snapshots in s'],
    idle.sort((a, b) => order(a.server_name, b.server_name)).map((r) => [
      `**${r.server_name}**`,
      `${fmt(r.connect.subscribed)} of ${fmt(r.connect.clients)}`,
      fmt(r.server.rss_before_kib),
      fmt(r.server.rss_end_kib),
      `**${fmt(r.server.rss_per_conn_kib, 1)}**`,
      `**${fmt(r.server.cpu_pct, 2)}**`,
      fmt(r.connect.storm_s, 3),
    ]),
  );
  md += '\n';
}

// Connect storm.
const storm = byScenario('storm');
if (storm.length) {
  const p = storm[0].params;
  md += `### Connect storm\n\n${fmt(p.clients)} clients connect and subscribe at once (every connect() `;
  md += 'issued back to back). Listen-queue overflows are the kernel\'s count (machine-wide) of handshakes ';
  md += 'dropped because the server\'s accept backlog was full: each costs that client a 1 s SYN retransmission.\n\n';
  md += table(
    ['server', 'subscribed', 'all snapshots in s', 'per client p50 ms', 'per client p99 ms', 'subscribe answer p99 ms', 'failures', 'listen-queue overflows'],
    storm.sort((a, b) => order(a.server_name, b.server_name)).map((r) => [
      `**${r.server_name}**`,
      `${fmt(r.connect.subscribed)} of ${fmt(r.connect.clients)}`,
      `**${fmt(r.connect.storm_s, 3)}**`,
      ms(r.connect.ready_ms.p50),
      ms(r.connect.ready_ms.p99),
      ms(r.connect.subscribe_first_byte_ms.p99),
      failures(r),
      fmt(r.connect.listen_overflows),
    ]),
  );
  md += '\n';
}

// Slow client.
const slow = byScenario('slow');
if (slow.length) {
  const p = slow[0].params;
  md += `### Slow client\n\n${fmt(p.slow_clients)} client that never reads among ${fmt(p.clients)} normal ones `;
  md += `(${fmt(p.rate)} positions/s for ${p.duration_s} s). The slow client also subscribes to a ballast event `;
  md += `fed ${fmt(p.slow_ballast_bytes_per_s / 1e6, 1)} MB/s, because on loopback the server's socket alone buffers `;
  md += 'megabytes (MSS 64 KiB) before the server\'s own queue starts to fill. "Buffers full" = first moment the ';
  md += 'server\'s socket held 90 % of the most it ever held for that client (NETLINK_SOCK_DIAG); "closed" = ';
  md += 'the server side of the connection left ESTABLISHED. Close code 1006 = no close frame reached the client.\n\n';
  md += table(
    ['server', 'slow client closed', 'after start s', 'after buffers full s', 'close code', 'normal clients p99 ms (max)', 'lost / closed normals', 'server CPU %'],
    slow.sort((a, b) => order(a.server_name, b.server_name)).map((r) => [
      `**${r.server_name}**`,
      r.slow ? `${r.slow.closed} of ${r.slow.clients}` : '–',
      r.slow ? fmt(r.slow.closed_after_start_s_max, 2) : '–',
      r.slow ? `**${fmt(r.slow.closed_after_stall_s_max, 2)}**` : '–',
      r.slow ? codes(r.slow.close_codes) : '–',
      `**${ms(r.latency_ms.p99)}** (${ms(r.latency_ms.max)})`,
      `${fmt(r.lost)} / ${closed(r)}`,
      fmt(r.server.cpu_pct, 0),
    ]),
  );
  md += '\n';
}

process.stdout.write(md);
