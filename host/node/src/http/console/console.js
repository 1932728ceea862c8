// wraft web console: polls this node once a second (one poll at a time) for /v1/status,
// /v1/fsms and /v1/modules (bearer token) and /metrics (no token), and renders the summary,
// the tables and two inline-SVG charts. Embedded in the node binary (include_str!) and
// served at /console.js by host/node/src/http/console.rs. Server data reaches the page
// only through textContent and attributes, never innerHTML.
'use strict';

const POLL_MS = 1000;
const TIMEOUT_MS = 5000;
const SAMPLES = 120;
const TOKEN_KEY = 'wraft-token';
const LATENCY = 'wraft_commit_raft_apply_duration_seconds';
const SVG_NS = 'http://www.w3.org/2000/svg';
const DASH = '\u2013'; // en dash: no value

const $ = (id) => document.getElementById(id);
const st = {
  token: null,
  node: null, // the answering node's id, once /v1/status has told it
  timer: null, running: false, again: false,
  modulesGone: false, // /v1/modules answered 404: not asked again until the next connect
  prev: null, // the previous metrics sample, for rates
  rate: [], mean: [], p99: [], // the charts' samples, oldest first
};

// ---- token ----

function setToken(token) {
  st.token = token && token.trim() ? token.trim() : null;
  try {
    if (st.token) sessionStorage.setItem(TOKEN_KEY, st.token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) { /* storage disabled: the token lives as long as the page */ }
  $('token').value = st.token || '';
}

function initialToken() {
  let token = null;
  try { token = sessionStorage.getItem(TOKEN_KEY); } catch (_) { /* none */ }
  // Accepted once from #token=...: a fragment never reaches a server; it is dropped at once.
  const part = location.hash.slice(1).split('&').find((p) => p.startsWith('token='));
  if (part) {
    try { token = decodeURIComponent(part.slice(6)); } catch (_) { token = part.slice(6); }
    history.replaceState(null, '', location.pathname + location.search);
  }
  return token;
}

// ---- fetching ----

class FetchError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// The body of a 2xx answer as text; otherwise a FetchError with the JSON error's message.
async function get(path, auth) {
  const opts = { headers: auth ? { Authorization: 'Bearer ' + st.token } : {}, cache: 'no-store' };
  if (typeof AbortSignal !== 'undefined' && AbortSignal.timeout) opts.signal = AbortSignal.timeout(TIMEOUT_MS);
  let res, text;
  try {
    res = await fetch(path, opts);
    text = await res.text();
  } catch (e) {
    const timedOut = e && e.name === 'TimeoutError';
    throw new FetchError(0, path + ': ' + (timedOut ? 'no answer in time' : (e && e.message) || 'network error'));
  }
  if (res.ok) return text;
  let message = 'HTTP ' + res.status;
  try {
    const body = JSON.parse(text);
    if (body && typeof body.message === 'string') message = body.message;
  } catch (_) { /* not a JSON error body */ }
  throw new FetchError(res.status, path + ': ' + message);
}

async function getJson(path) {
  const text = await get(path, true);
  try { return JSON.parse(text); } catch (_) { throw new FetchError(200, path + ': answer is not JSON'); }
}

// A listing: a bare array, or one wrapped as {"Fsms": [...]} or {"fsms": [...]}.
function listing(body, key, path) {
  if (Array.isArray(body)) return body;
  for (const k of [key, key.toLowerCase()]) if (body && Array.isArray(body[k])) return body[k];
  throw new FetchError(200, path + ': unexpected answer ' + JSON.stringify(body).slice(0, 80));
}

// ---- Prometheus text format ----

const promNumber = (s) => (s === '+Inf' ? Infinity : s === '-Inf' ? -Infinity : Number(s));

function parseMetrics(text) {
  const out = new Map(); // name -> [{labels, value}]
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const m = line[0] === '#' ? null : /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value: promNumber(m[3]) });
  }
  return out;
}

// A metric's series: the answering node's where they carry its `node` label (several nodes
// in one process each label their scrape-time gauges), else all of them.
function series(m, name) {
  const all = m.get(name) || [];
  const own = st.node == null ? [] : all.filter((s) => s.labels.node === String(st.node));
  return own.length ? own : all;
}

// The sum of a metric's series (or their largest), null when it has none.
function total(m, name, max = false) {
  const s = series(m, name);
  if (!s.length) return null;
  return max ? Math.max(...s.map((x) => x.value)) : s.reduce((a, x) => a + x.value, 0);
}

function buckets(m, name) {
  const byLe = new Map();
  for (const s of series(m, name + '_bucket')) {
    const le = promNumber(s.labels.le);
    byLe.set(le, (byLe.get(le) || 0) + s.value);
  }
  return byLe;
}

// The q-quantile of the observations between two snapshots of a histogram's (cumulative)
// buckets, interpolated linearly within its bucket; past the last finite bound, that bound.
function quantile(prev, cur, q) {
  const les = [...cur.keys()].filter((le) => !Number.isNaN(le)).sort((a, b) => a - b);
  const d = les.map((le) => cur.get(le) - ((prev && prev.get(le)) || 0));
  const n = d[d.length - 1];
  if (!(n > 0)) return NaN;
  const rank = q * n;
  let lo = 0;
  let below = 0;
  for (let i = 0; i < les.length; i++) {
    if (d[i] >= rank) {
      if (!Number.isFinite(les[i])) return lo;
      const inside = d[i] - below;
      return inside > 0 ? lo + ((les[i] - lo) * (rank - below)) / inside : les[i];
    }
    [lo, below] = [les[i], d[i]];
  }
  return NaN;
}

function push(arr, v) {
  arr.push(v);
  if (arr.length > SAMPLES) arr.shift();
}

// One chart sample from the change since the previous scrape: commits/s, mean and p99 ms.
function sample(m, status) {
  const cur = {
    t: performance.now(),
    committed: total(m, 'wraft_raft_committed_index', true) ?? (status ? status.committed : null),
    sum: total(m, LATENCY + '_sum') ?? 0,
    count: total(m, LATENCY + '_count') ?? 0,
    buckets: buckets(m, LATENCY),
  };
  const p = st.prev;
  st.prev = cur;
  if (!p) return;
  const dt = (cur.t - p.t) / 1000;
  const dc = cur.committed != null && p.committed != null ? cur.committed - p.committed : NaN;
  push(st.rate, dt > 0 && dc >= 0 ? dc / dt : NaN); // NaN: a gap (no data, or a restart)
  const [dn, ds] = [cur.count - p.count, cur.sum - p.sum];
  const some = dn > 0 && ds >= 0;
  push(st.mean, some ? (ds / dn) * 1000 : NaN);
  push(st.p99, some ? quantile(p.buckets, cur.buckets, 0.99) * 1000 : NaN);
}

// ---- formatting and DOM helpers ----

const text = (id, v) => { $(id).textContent = v == null ? DASH : String(v); };

function fmt(v) {
  if (!Number.isFinite(v)) return DASH;
  const a = Math.abs(v);
  if (a >= 1e6) return +(v / 1e6).toFixed(1) + 'M';
  if (a >= 1e4) return +(v / 1e3).toFixed(1) + 'k';
  return a >= 100 ? v.toFixed(0) : String(+v.toPrecision(3));
}

function si(n) {
  for (const [d, u] of [[1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) if (n >= d) return +(n / d).toFixed(1) + u;
  return String(n);
}

function bytes(n) {
  if (!Number.isFinite(n)) return DASH;
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return (i ? +n.toFixed(1) : n) + ' ' + units[i];
}

// A module id: 64 hex digits in the JSON API.
function hexId(v) {
  return String(v ?? '');
}

// FsmLimits in one line, and every field exactly for the title.
function limitsText(l) {
  if (!l || typeof l !== 'object') return [DASH, ''];
  const parts = [];
  if (l.fuel != null) parts.push('fuel ' + si(l.fuel));
  if (l.query_fuel != null) parts.push('query ' + si(l.query_fuel));
  if (l.memory_pages != null) parts.push('mem ' + bytes(l.memory_pages * 65536));
  if (l.max_output_bytes != null) parts.push('out ' + bytes(l.max_output_bytes));
  if (l.storage_bytes != null) parts.push('store ' + bytes(l.storage_bytes));
  return [parts.join(' \u00b7 ') || DASH, Object.entries(l).map(([k, v]) => k + ': ' + v).join('\n')];
}

function el(tag, content, cls, title) {
  const e = document.createElement(tag);
  if (content != null) e.textContent = String(content);
  if (cls) e.className = cls;
  if (title) e.title = title;
  return e;
}

function fillTable(id, rows, note) {
  $(id).tBodies[0].replaceChildren(...rows);
  const p = document.querySelector('.note[data-for="' + id + '"]');
  p.textContent = note || '';
  p.hidden = !note;
}

// ---- rendering ----

function renderStatus(s) {
  text('node', s.node);
  $('role').textContent = String(s.state);
  $('role').className = 'value role-' + String(s.state).toLowerCase();
  text('leader', s.leader ?? 'none');
  text('term', s.term);
  text('committed', s.committed);
  text('applied', s.applied);
  text('last-log', s.last_log);
  const rows = [...(s.nodes || [])].sort((a, b) => a.id - b.id).map((n) => {
    const lag = n.matched != null && s.last_log != null ? Math.max(0, s.last_log - n.matched) : null;
    const role = n.id === s.leader ? 'Leader' : n.membership === 'learner' ? 'Learner' : 'Follower';
    const self = n.id === s.node;
    const tr = el('tr', null, self ? 'self' : '', self ? 'the answering node' : '');
    tr.dataset.node = String(n.id);
    tr.append(el('td', n.id), el('td', n.addr), el('td', n.membership),
      el('td', role, role === 'Leader' ? 'leader' : ''), el('td', n.matched ?? DASH, 'num'),
      el('td', lag ?? DASH, lag > 100 ? 'num lagging' : 'num'));
    return tr;
  });
  fillTable('members', rows, rows.length ? '' : 'No members.');
}

function renderFsms(list) {
  const rows = list.map((f) => {
    const id = hexId(f.module_id);
    const [limits, exact] = limitsText(f.limits);
    const tr = el('tr');
    tr.dataset.fsm = String(f.name);
    tr.append(el('td', f.name), el('td', id.slice(0, 12), '', id), el('td', limits, 'wrap', exact));
    return tr;
  });
  fillTable('fsms', rows, rows.length ? '' : 'No FSMs.');
}

function renderModules(list) {
  const rows = list.map((mod) => {
    const id = hexId(mod.module_id);
    const fsms = Array.isArray(mod.fsms) && mod.fsms.length ? mod.fsms.join(', ') : DASH;
    const tr = el('tr');
    tr.dataset.module = id;
    tr.append(el('td', id.slice(0, 12), '', id),
      el('td', bytes(mod.size_bytes), 'num', mod.size_bytes + ' bytes'), el('td', fsms, 'wrap'));
    return tr;
  });
  fillTable('modules', rows, rows.length ? '' : 'No modules deployed.');
}

function renderMetrics(m, haveStatus) {
  const info = series(m, 'wraft_build_info').find((s) => s.labels.version);
  if (info) text('version', info.labels.version);
  const verified = total(m, 'wraft_checkpoints_verified_total') ?? 0;
  const bad = total(m, 'wraft_checkpoint_mismatches_total') ?? 0;
  text('checkpoints', verified + ' verified, ' + bad + (bad === 1 ? ' mismatch' : ' mismatches'));
  $('checkpoints').classList.toggle('bad', bad > 0);
  $('diverged').hidden = !((total(m, 'wraft_state_diverged') ?? 0) > 0);
  if (haveStatus) return;
  // Without a token (or while /v1/status fails) the scrape-time gauges tell what they can.
  const leader = total(m, 'wraft_raft_leader_id', true);
  if (leader != null) text('leader', leader > 0 ? leader : 'none');
  const gauges = { term: 'term', committed: 'committed_index', applied: 'applied_index', 'last-log': 'last_log_index' };
  for (const [id, name] of Object.entries(gauges)) {
    const v = total(m, 'wraft_raft_' + name, true);
    if (v != null) text(id, v);
  }
}

// ---- charts ----

function svgEl(tag, attrs, content) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (content != null) e.textContent = content;
  return e;
}

// The smallest of 1, 2, 2.5, 5 times a power of ten at least v.
function niceMax(v) {
  if (!(v > 0) || !Number.isFinite(v)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].find((f) => f * p >= v) * p;
}

// Lines of up to SAMPLES values each (newest at the right; NaN leaves a gap), on a y axis
// from 0 to a round maximum, with that maximum and the current value written at the top.
function drawChart(svg, lines, unit, current) {
  const [W, H, L, R, T, B] = [600, 170, 48, 10, 24, 20];
  const finite = lines.flatMap((l) => l.data).filter(Number.isFinite);
  const max = niceMax(Math.max(1, ...finite));
  const px = (i, n) => L + ((W - L - R) * (SAMPLES - n + i)) / (SAMPLES - 1);
  const py = (v) => T + (H - T - B) * (1 - Math.min(Math.max(v, 0), max) / max);
  const kids = [];
  for (const f of [0, 0.5, 1]) {
    const y = +py(max * f).toFixed(1);
    kids.push(svgEl('line', { x1: L, x2: W - R, y1: y, y2: y, class: f ? 'grid' : 'axis' }),
      svgEl('text', { x: L - 6, y: y + 4, 'text-anchor': 'end' }, fmt(max * f)));
  }
  kids.push(svgEl('text', { x: L, y: H - 4 }, '2 min ago'),
    svgEl('text', { x: W - R, y: H - 4, 'text-anchor': 'end' }, 'now'),
    svgEl('text', { x: L, y: 14 }, 'max ' + fmt(max) + ' ' + unit),
    svgEl('text', { x: W - R, y: 14, 'text-anchor': 'end', class: 'current' }, current));
  for (const { data, cls } of lines) {
    let run = [];
    const flush = () => {
      if (run.length > 1) kids.push(svgEl('polyline', { class: cls, points: run.map((p) => p.join(',')).join(' ') }));
      if (run.length === 1) kids.push(svgEl('circle', { class: cls, cx: run[0][0], cy: run[0][1], r: 1.5 }));
      run = [];
    };
    data.forEach((v, i) => {
      if (Number.isFinite(v)) run.push([px(i, data.length).toFixed(1), py(v).toFixed(1)]);
      else flush();
    });
    flush();
  }
  if (!finite.length) {
    const mid = { x: L + (W - L - R) / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' };
    kids.push(svgEl('text', mid, 'no data yet'));
  }
  svg.replaceChildren(...kids);
}

function drawCharts() {
  const [rate, mean, p99] = [st.rate, st.mean, st.p99].map((a) => (a.length ? a[a.length - 1] : NaN));
  drawChart($('commit-rate'), [{ data: st.rate, cls: 'line' }], '/s',
    Number.isFinite(rate) ? fmt(rate) + ' /s' : DASH);
  const now = Number.isFinite(mean) ? fmt(mean) + ' ms' + (Number.isFinite(p99) ? ' \u00b7 p99 ' + fmt(p99) : '') : DASH;
  drawChart($('commit-latency'), [{ data: st.p99, cls: 'line p99' }, { data: st.mean, cls: 'line' }], 'ms', now);
}

// ---- the polling loop ----

async function poll() {
  const authed = st.token != null;
  const [status, fsms, modules, metrics] = await Promise.allSettled([
    authed ? getJson('v1/status') : null,
    authed ? getJson('v1/fsms') : null,
    authed && !st.modulesGone ? getJson('v1/modules') : null,
    get('metrics', false),
  ]);
  const errors = [];
  // Renders a fulfilled answer (true if it did); a refusal `refused` does not take is an error.
  const handle = (r, render, refused) => {
    if (r.status === 'fulfilled') {
      if (r.value == null) return false;
      try { render(r.value); return true; } catch (e) { errors.push(e.message); return false; }
    }
    if (!(refused && refused(r.reason))) errors.push((r.reason && r.reason.message) || String(r.reason));
    return false;
  };
  let s = null;
  const haveStatus = handle(status, (v) => { st.node = v.node; s = v; renderStatus(v); });
  handle(fsms, (v) => renderFsms(listing(v, 'Fsms', 'v1/fsms')));
  handle(modules, (v) => renderModules(listing(v, 'Modules', 'v1/modules')), (e) => {
    // A node older than GET /v1/modules answers 404: stop asking it.
    if (e.status === 404) fillTable('modules', [], 'Not served by this node.');
    st.modulesGone = e.status === 404;
    return e.status === 404;
  });
  const m = handle(metrics, (v) => {
    const parsed = parseMetrics(v);
    sample(parsed, s);
    renderMetrics(parsed, haveStatus);
  });
  if (!m) [st.rate, st.mean, st.p99].forEach((a) => push(a, NaN));
  drawCharts();
  showError(errors[0]);
  if (!errors.length) text('updated', new Date().toLocaleTimeString());
}

function showError(message) {
  $('error').textContent = message || '';
  $('error').hidden = !message;
}

function schedule(ms) {
  clearTimeout(st.timer);
  st.timer = setTimeout(tick, ms);
}

// One poll, then the next a second after it ends: never two at once. Called while a poll
// runs (a new token), it asks for the next poll at once instead.
async function tick() {
  if (st.running) { st.again = true; return; }
  st.running = true;
  try {
    await poll();
  } catch (e) {
    showError(String((e && e.message) || e));
  } finally {
    st.running = false;
    schedule(st.again ? 0 : POLL_MS);
    st.again = false;
  }
}

function connect() {
  setToken($('token').value);
  st.modulesGone = false;
  if (!st.token) {
    st.node = null;
    for (const id of ['members', 'fsms', 'modules']) fillTable(id, [], 'Connect with a token to list ' + id + '.');
  }
  tick();
}

$('connect').addEventListener('click', connect);
$('token').addEventListener('keydown', (e) => { if (e.key === 'Enter') connect(); });
setToken(initialToken());
drawCharts();
tick();
