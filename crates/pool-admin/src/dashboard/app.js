// pool-admin's dashboard: polls the admin API with the bearer token, keeps five minutes of
// readings per pool, draws them on <canvas>, and drives the resize control. No dependencies,
// no build step. Text from the API is only ever inserted as text (textContent), never as markup.
'use strict';

const API = new URL('../api/v1/admin/connection-pools/', location.href);
const TOKEN_KEY = 'pool-admin-token';
const WINDOW_MS = 5 * 60 * 1000; // the readings kept, and the widest the charts get
const MIN_SPAN_MS = 30 * 1000; // the narrowest, while the first readings come in
const STATS_EVERY_MS = 1000;
const SLOW_EVERY_MS = 5000; // health (a real round trip on every pool) and optimize

// Each chart's series: the reading's key, the legend, the colour, and whether it is dashed.
const CHARTS = {
  connections: [
    ['inUse', 'in use', '#2563eb'],
    ['idle', 'idle', '#16a34a'],
    ['waiting', 'waiting', '#dc2626'],
    ['max', 'max size', '#98a2b3', true],
  ],
  wait: [['p99', 'p99 since the previous poll', '#9333ea']],
  checkouts: [['rate', 'checkouts/s', '#ea580c']],
};

const $ = (id) => document.getElementById(id);

const state = {
  token: null,
  session: 0, // bumped on sign-in and sign-out; a poll loop of an older session stops
  pools: new Map(), // id -> { card, points, last }
};

class AuthError extends Error {}

// --- the API -------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (options.body) headers['Content-Type'] = 'application/json';
  const response = await fetch(new URL(path, API), { ...options, headers, cache: 'no-store' });
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON: the status says enough.
  }
  if (response.status === 401) throw new AuthError(body?.error ?? 'unauthorized');
  return { status: response.status, body };
}

// Runs `task` now and every `ms` after it finishes, while the session lasts.
function every(ms, task) {
  const session = state.session;
  const run = async () => {
    if (session !== state.session) return;
    try {
      await task();
    } catch (e) {
      if (session !== state.session) return;
      if (e instanceof AuthError) return signOut(`the server refused the token: ${e.message}`);
      $('status').textContent = `cannot reach the server: ${e.message}`;
      $('status').className = 'error';
    }
    setTimeout(run, ms);
  };
  run();
}

// --- signing in and out --------------------------------------------------------------------

function signIn(token) {
  state.token = token;
  state.session += 1;
  sessionStorage.setItem(TOKEN_KEY, token);
  $('login').hidden = true;
  $('logout').hidden = false;
  $('status').textContent = 'connecting…';
  every(STATS_EVERY_MS, pollStats);
  every(SLOW_EVERY_MS, pollHealth);
  every(SLOW_EVERY_MS, pollOptimize);
}

function signOut(message) {
  state.token = null;
  state.session += 1;
  sessionStorage.removeItem(TOKEN_KEY);
  $('board').hidden = true;
  $('logout').hidden = true;
  $('health').hidden = true;
  $('login').hidden = false;
  $('auth-error').textContent = message;
  $('status').textContent = 'not signed in';
  $('status').className = 'muted';
  $('token-input').focus();
}

// --- polling -------------------------------------------------------------------------------

async function pollStats() {
  const { status, body } = await api('stats');
  if (status !== 200) throw new Error(body?.error ?? `stats answered ${status}`);
  const now = Date.now();
  const seen = new Set();
  // Both maps are keyed by pool id (`postgresql:main`, `redis:cache`), as every route names pools.
  for (const pools of [body.database_pools, body.redis_pools]) {
    for (const [id, s] of Object.entries(pools)) {
      seen.add(id);
      const pool = poolFor(id);
      record(pool, s, now);
      showNumbers(pool, s);
    }
  }
  for (const [id, pool] of state.pools) {
    if (!seen.has(id)) {
      pool.card.remove();
      state.pools.delete(id);
    }
  }
  const ids = [...state.pools.keys()].sort();
  for (const id of ids) $('pools').append(state.pools.get(id).card); // keeps the cards sorted
  showRecommendations(body.recommendations);
  showReplication(body.replication);
  drawAll(now);
  $('board').hidden = false;
  $('status').textContent = `updated ${new Date(now).toLocaleTimeString()}`;
  $('status').className = 'muted';
}

async function pollHealth() {
  const { status, body } = await api('health');
  if (status !== 200 && status !== 503) throw new Error(body?.error ?? `health answered ${status}`);
  const overall = $('health');
  overall.hidden = false;
  overall.textContent = body.status;
  overall.className = `badge ${body.status === 'healthy' ? 'good' : 'bad'}`;
  for (const [id, pool] of state.pools) {
    const h = body.pools[id];
    const badge = pool.card.querySelector('.pool-health');
    badge.textContent = h ? (h.healthy ? 'healthy' : 'unhealthy') : '';
    badge.className = `badge pool-health ${h?.healthy ? 'good' : 'bad'}`;
    badge.title = h?.error ?? `round trip ${fmt((h?.latency_seconds ?? 0) * 1000)} ms`;
  }
}

async function pollOptimize() {
  const { status, body } = await api('optimize');
  if (status !== 200) throw new Error(body?.error ?? `optimize answered ${status}`);
  const list = $('decisions');
  list.replaceChildren(
    ...body.auto_tuner_decisions.slice(-10).reverse().map((d) => {
      const item = document.createElement('li');
      item.textContent = `${d.pool}: ${d.action} ${d.from} → ${d.to} (window ${d.window}: ${d.reason})`;
      return item;
    }),
  );
  $('no-decisions').hidden = body.auto_tuner_decisions.length > 0;
}

// --- one pool: its card, its readings ------------------------------------------------------

function poolFor(id) {
  let pool = state.pools.get(id);
  if (pool) return pool;
  const card = $('pool-template').content.firstElementChild.cloneNode(true);
  card.dataset.pool = id;
  card.querySelector('.pool-id').textContent = id;
  for (const canvas of card.querySelectorAll('canvas')) {
    canvas.dataset.points = '0';
    const caption = canvas.previousElementSibling;
    for (const [, label, colour] of CHARTS[canvas.dataset.chart]) {
      const key = document.createElement('span');
      key.className = 'key';
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = colour;
      key.append(swatch, label);
      caption.append(key);
    }
  }
  pool = { card, points: [], last: null };
  const form = card.querySelector('form');
  form.addEventListener('input', () => (form.dataset.dirty = 'true'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    resize(id, form);
  });
  state.pools.set(id, pool);
  return pool;
}

// One reading: the gauges as they are, checkouts per second and the wait p99 since the last.
function record(pool, s, now) {
  const counts = s.wait_time_histogram.counts;
  const prev = pool.last;
  let rate = null;
  let p99 = null;
  // A reset of the stats (counters going down) leaves a gap rather than a bogus spike.
  if (prev && s.acquires >= prev.acquires && now > prev.t) {
    rate = (s.acquires - prev.acquires) / ((now - prev.t) / 1000);
    const delta = counts.map((c, i) => c - (prev.counts[i] ?? 0));
    const p = delta.every((d) => d >= 0) ? quantile(delta, s.wait_time_histogram.bounds, 0.99) : null;
    p99 = p === null ? null : p * 1000;
  }
  pool.last = { t: now, acquires: s.acquires, counts };
  pool.points.push({
    t: now,
    inUse: s.active_connections,
    idle: s.idle_connections,
    waiting: s.waiting,
    max: s.pool_size + s.max_overflow,
    p99,
    rate,
  });
  while (pool.points.length > 0 && pool.points[0].t < now - WINDOW_MS) pool.points.shift();
}

// The `q` quantile of a bucketed distribution, interpolated inside its bucket (as the server's
// `wait_time_p99` is): `counts` has one more entry than `bounds`, for values above them all.
// Null when nothing was recorded: no checkouts, no wait to speak of (a gap in the chart).
function quantile(counts, bounds, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = Math.max(q * total, 1);
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] === 0) continue;
    if (seen + counts[i] >= rank) {
      const lo = i === 0 ? 0 : bounds[i - 1];
      const hi = i < bounds.length ? bounds[i] : lo;
      return lo + ((hi - lo) * (rank - seen)) / counts[i];
    }
    seen += counts[i];
  }
  return bounds[bounds.length - 1];
}

function showNumbers(pool, s) {
  const values = {
    ...s,
    max_size: s.pool_size + s.max_overflow,
    // Open: callers that find nothing idle fail at once until a probe connects.
    breaker: s.breaker_open ? `open (${s.breaker_rejections} failed fast)` : 'closed',
  };
  for (const dd of pool.card.querySelectorAll('[data-field]')) {
    dd.textContent = String(values[dd.dataset.field]);
  }
  const form = pool.card.querySelector('form');
  // Follow the pool's size (a resize from elsewhere, the auto-tuner) unless the user is typing.
  if (form.dataset.dirty !== 'true' && !form.contains(document.activeElement)) {
    form.elements.pool_size.value = s.pool_size;
    form.elements.max_overflow.value = s.max_overflow;
  }
}

async function resize(id, form) {
  const out = form.querySelector('output');
  // A blank or non-integer field is refused here: Number('') is 0, which would resize to zero.
  const whole = (field) => {
    const text = form.elements[field].value.trim();
    return /^\d+$/.test(text) ? Number(text) : null;
  };
  const wanted = { pool_size: whole('pool_size'), max_overflow: whole('max_overflow') };
  const bad = Object.keys(wanted).filter((field) => wanted[field] === null);
  if (bad.length > 0) {
    out.className = 'resize-result error';
    out.textContent = `${bad.join(' and ')} must be a whole number`;
    return;
  }
  out.className = 'resize-result muted';
  out.textContent = 'resizing…';
  try {
    const { status, body } = await api(`pools/${encodeURIComponent(id)}/resize`, {
      method: 'POST',
      body: JSON.stringify(wanted),
    });
    if (status === 200) {
      out.textContent = `resized: pool_size ${body.pool_size}, max_overflow ${body.max_overflow}`;
      out.className = 'resize-result ok';
      delete form.dataset.dirty;
      await pollStats();
    } else {
      out.textContent = body?.error ?? `resize answered ${status}`;
      out.className = 'resize-result error';
    }
  } catch (e) {
    if (e instanceof AuthError) return signOut(`the server refused the token: ${e.message}`);
    out.textContent = `cannot reach the server: ${e.message}`;
    out.className = 'resize-result error';
  }
}

// --- recommendations and replicas ----------------------------------------------------------

function cell(text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function badge(text, className) {
  const span = document.createElement('span');
  span.className = `badge ${className}`;
  span.textContent = text;
  return span;
}

function showRecommendations(recommendations) {
  const rows = recommendations.map((r) => {
    const tr = document.createElement('tr');
    tr.dataset.testid = 'recommendation';
    tr.dataset.pool = r.pool;
    tr.dataset.severity = r.severity;
    const severity = cell('');
    severity.append(badge(r.severity, `sev-${r.severity}`));
    tr.append(severity, cell(r.pool), cell(r.issue), cell(r.suggestion));
    return tr;
  });
  $('recommendations').tBodies[0].replaceChildren(...rows);
  $('recommendations').dataset.count = String(rows.length);
  $('recommendations').hidden = rows.length === 0;
  $('no-recommendations').hidden = rows.length > 0;
}

function showReplication(replication) {
  const rows = [];
  for (const [cluster, c] of Object.entries(replication)) {
    for (const r of c.replicas) {
      const tr = document.createElement('tr');
      tr.dataset.testid = 'replica';
      tr.dataset.pool = r.pool;
      const state = cell('');
      state.append(
        r.banned ? badge('banned', 'bad') : r.lagging ? badge('lagging', 'warn') : badge('serving', 'good'),
      );
      const lag = r.lag_seconds === null ? 'unknown' : `${fmt(r.lag_seconds * 1000)} ms`;
      tr.append(
        cell(cluster),
        cell(r.pool),
        state,
        cell(String(r.bans), 'num'),
        cell(lag, 'num'),
        cell(r.lag_bytes === null ? '' : String(r.lag_bytes), 'num'),
        cell(String(r.reads), 'num'),
        cell(String(c.fallbacks), 'num'),
        cell(r.last_error ?? ''),
      );
      rows.push(tr);
    }
  }
  $('replicas').tBodies[0].replaceChildren(...rows);
  $('replicas').hidden = rows.length === 0;
  $('no-replicas').hidden = rows.length > 0;
}

// --- charts --------------------------------------------------------------------------------

function drawAll(now) {
  for (const pool of state.pools.values()) {
    for (const canvas of pool.card.querySelectorAll('canvas')) {
      draw(canvas, pool.points, CHARTS[canvas.dataset.chart], now);
    }
  }
}

// A line chart of the readings kept: time on x, as long ago as the oldest reading (at least
// half a minute, at most five), the series' values on y from zero to a round number at or above
// the largest. Records on the canvas how many readings it drew (`data-points`) and the largest
// and latest values of its first series (`data-max`, `data-last`), for tests and tools.
function draw(canvas, points, series, now) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  const ctx = canvas.getContext('2d');
  ctx.scale(dpr, dpr);
  const box = { left: 44, right: width - 8, top: 6, bottom: height - 18 };
  const shown = points.filter((p) => series.some(([key]) => p[key] !== null));
  const values = shown.flatMap((p) => series.map(([key]) => p[key])).filter((v) => v !== null);
  const top = niceCeil(Math.max(0, ...values));
  const oldest = points.length > 0 ? points[0].t : now;
  const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - oldest));
  const x = (t) => box.left + ((t - (now - span)) / span) * (box.right - box.left);
  const y = (v) => box.bottom - (v / top) * (box.bottom - box.top);

  ctx.font = '10px system-ui, "DejaVu Sans", sans-serif';
  ctx.fillStyle = '#667085';
  ctx.strokeStyle = '#e3e6eb';
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (const v of [0, top / 2, top]) {
    ctx.beginPath();
    ctx.moveTo(box.left, Math.round(y(v)) + 0.5);
    ctx.lineTo(box.right, Math.round(y(v)) + 0.5);
    ctx.stroke();
    ctx.fillText(fmt(v), box.left - 4, y(v));
  }
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  const step = [5, 10, 15, 30, 60].map((s) => s * 1000).find((s) => span / s <= 6) ?? 60000;
  for (let ago = Math.floor(span / step) * step; ago >= 0; ago -= step) {
    const label = ago === 0 ? 'now' : ago % 60000 === 0 ? `-${ago / 60000}m` : `-${ago / 1000}s`;
    const at = Math.min(Math.max(x(now - ago), box.left + 10), box.right - 12);
    ctx.fillText(label, at, box.bottom + 4);
  }

  ctx.save();
  ctx.beginPath();
  ctx.rect(box.left, box.top - 2, box.right - box.left, box.bottom - box.top + 4);
  ctx.clip();
  for (const [key, , colour, dashed] of series) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.setLineDash(dashed ? [4, 3] : []);
    ctx.fillStyle = colour;
    ctx.beginPath();
    points.forEach((p, i) => {
      if (p[key] === null) return; // a gap: no reading to draw from
      const joined = i > 0 && points[i - 1][key] !== null;
      if (joined) ctx.lineTo(x(p.t), y(p[key]));
      else ctx.moveTo(x(p.t), y(p[key]));
      // A reading alone between gaps is a dot.
      if (!joined && points[i + 1]?.[key] == null) ctx.fillRect(x(p.t) - 1.5, y(p[key]) - 1.5, 3, 3);
    });
    ctx.stroke();
  }
  ctx.restore();

  const first = shown.map((p) => p[series[0][0]]).filter((v) => v !== null);
  canvas.dataset.points = String(shown.length);
  canvas.dataset.max = String(first.length > 0 ? Math.max(...first) : 0);
  canvas.dataset.last = String(first.length > 0 ? first[first.length - 1] : 0);
}

// 1, 2 or 5 times a power of ten, at or above `v` (1 for nothing to show).
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) {
    if (m * power >= v * (1 - 1e-9)) return m * power;
  }
  return 10 * power;
}

function fmt(v) {
  if (v === 0) return '0';
  if (Math.abs(v) >= 100) return String(Math.round(v));
  return String(Number(v.toPrecision(2)));
}

// --- start ---------------------------------------------------------------------------------

function start() {
  // A token handed over in the URL's fragment (never sent to the server) is taken once and
  // removed from the address bar and the history.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.has('token')) {
    sessionStorage.setItem(TOKEN_KEY, fragment.get('token'));
    history.replaceState(null, '', location.pathname + location.search);
  }
  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    $('auth-error').textContent = '';
    signIn($('token-input').value.trim());
  });
  $('logout').addEventListener('click', () => signOut(''));
  window.addEventListener('resize', () => drawAll(Date.now()));
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else signOut('');
}

start();
