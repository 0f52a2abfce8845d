// The mesh status page: polls this relay's /status every second (and, for the
// links this relay does not own, the /status of the regions at their ends),
// draws regions as nodes and links as edges coloured by state, and lists the numbers.
const REFRESH_MS = 1000;
const PEER_TIMEOUT_MS = 800;
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let topic = params.get('topic') || '';
$('topic').value = topic;

const linkKey = (a, b) => [a, b].sort().join('|');

async function getJSON(url, timeoutMs) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const response = await fetch(url, { signal: controller.signal, cache: 'no-store' });
    const body = await response.json();
    if (!response.ok) throw new Error(body?.error?.message ?? `HTTP ${response.status}`);
    return body;
  } finally {
    clearTimeout(timer);
  }
}

/// Merges this relay's report with the reports of other regions that answered:
/// each link's state comes from the relays at its ends.
function merge(local, peers) {
  const reports = new Map([[local.region, local], ...peers.map((p) => [p.region, p])]);
  const links = local.links.map((l) => {
    const [a, b] = l.between;
    const views = [];
    for (const end of [a, b]) {
      const report = reports.get(end);
      const own = report?.links.find((x) => x.own && linkKey(...x.between) === linkKey(a, b));
      if (own) views.push({ from: end, to: end === a ? b : a, link: own });
    }
    let state = 'unknown';
    if (views.length) state = views.every((v) => v.link.state === 'up') ? 'up' : 'down';
    return { a, b, latency: l.latency_ms, state, views };
  });
  const regions = local.regions.map((r) => {
    let reachable = r.reachable === undefined ? 'unknown' : String(r.reachable);
    if (reachable === 'unknown') {
      // Not a neighbour: reachable when a path of links known to be up leads there.
      reachable = pathUp(local.region, r.name, links) ? 'true' : links.some((l) => l.state === 'unknown') ? 'unknown' : 'false';
    }
    return { ...r, reachable, report: reports.get(r.name) };
  });
  return { regions, links };
}

function pathUp(from, to, links) {
  const seen = new Set([from]);
  const queue = [from];
  while (queue.length) {
    const r = queue.shift();
    if (r === to) return true;
    for (const l of links) {
      if (l.state !== 'up') continue;
      const next = l.a === r ? l.b : l.b === r ? l.a : null;
      if (next && !seen.has(next)) {
        seen.add(next);
        queue.push(next);
      }
    }
  }
  return false;
}

function layout(names) {
  const cx = 230, cy = 205, radius = names.length <= 1 ? 0 : 150;
  const at = new Map();
  names.forEach((name, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / names.length;
    at.set(name, { x: cx + radius * Math.cos(angle), y: cy + radius * Math.sin(angle) });
  });
  return at;
}

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawGraph(view, self) {
  const svg = $('mesh');
  const at = layout(view.regions.map((r) => r.name));
  svg.replaceChildren();
  for (const l of view.links) {
    const p = at.get(l.a), q = at.get(l.b);
    if (!p || !q) continue;
    svg.append(el('line', { class: 'edge', x1: p.x, y1: p.y, x2: q.x, y2: q.y, 'data-link': linkKey(l.a, l.b), 'data-state': l.state }));
    svg.append(el('text', { class: 'edge-label', x: (p.x + q.x) / 2 + 6, y: (p.y + q.y) / 2 - 6 }, `${l.latency} ms`));
  }
  for (const r of view.regions) {
    const p = at.get(r.name);
    const g = el('g', { class: 'node', 'data-region': r.name, 'data-reachable': r.reachable, 'data-self': String(r.name === self) });
    g.append(el('circle', { cx: p.x, cy: p.y, r: 26 }));
    g.append(el('text', { x: p.x, y: p.y + 44, 'text-anchor': 'middle' }, r.name));
    svg.append(g);
  }
}

function cell(row, text, cls) {
  const td = document.createElement('td');
  if (cls) td.className = cls;
  td.textContent = text;
  row.append(td);
  return td;
}

const num = (n) => (n === null || n === undefined ? '–' : typeof n === 'number' ? n.toLocaleString('en-US', { maximumFractionDigits: 2 }) : String(n));

function drawLinks(view) {
  const body = $('links').querySelector('tbody');
  body.replaceChildren();
  for (const l of view.links) {
    const directions = l.views.length ? l.views : [{ from: l.a, to: l.b, link: null }];
    for (const v of directions) {
      const tr = document.createElement('tr');
      tr.dataset.link = linkKey(l.a, l.b);
      tr.dataset.from = v.from;
      tr.dataset.state = v.link ? v.link.state : 'unknown';
      cell(tr, `${v.from} → ${v.to}`);
      const s = cell(tr, v.link ? v.link.state : 'not known', 'left');
      s.classList.add('state');
      cell(tr, `${l.latency} ms`);
      cell(tr, typeof v.link?.rtt_ms === 'number' ? `${num(v.link.rtt_ms)} ms` : '–');
      const sent = v.link?.sent ?? {};
      for (const key of ['batches', 'entries', 'entries_per_batch', 'publications', 'raw_bytes', 'wire_bytes']) cell(tr, num(sent[key]));
      cell(tr, typeof sent.compression_ratio === 'number' ? `${num(sent.compression_ratio)}×` : '–');
      cell(tr, num(v.link?.received?.batches));
      const q = v.link?.queue;
      cell(tr, q ? `${num(q.messages)} / ${num(q.bytes)} B / ${num(q.unacknowledged_batches)}` : '–').classList.add('queue');
      cell(tr, num(sent.overflows));
      body.append(tr);
    }
  }
}

function drawRegions(view) {
  const body = $('regions').querySelector('tbody');
  body.replaceChildren();
  for (const r of view.regions) {
    const tr = document.createElement('tr');
    tr.dataset.region = r.name;
    tr.dataset.reachable = r.reachable;
    const name = cell(tr, '');
    const a = document.createElement('a');
    a.href = `${r.url}/status.html`;
    a.textContent = r.name + (r.self ? ' (this relay)' : '');
    name.append(a);
    cell(tr, r.reachable === 'true' ? 'reachable' : r.reachable === 'false' ? 'unreachable' : 'not known', 'left');
    const c = r.report?.counts ?? {};
    for (const key of ['connections', 'subscriptions', 'topics', 'publications', 'relayed_publications']) cell(tr, num(c[key]));
    body.append(tr);
  }
}

function drawTopic(info) {
  const box = $('topic-info');
  if (!info) return;
  const lines = [
    `home            ${info.home} (${info.home_by}${info.home !== info.canonical_home ? `; canonical home ${info.canonical_home}` : ''})`,
    `position        ${info.epoch !== undefined ? `epoch ${info.epoch}, offset ${info.offset}` : `not known: ${info.position_unknown}`}`,
    `failover order  ${info.failover_order.join(' > ')}`,
    'fan-out tree',
  ];
  const walk = (n, depth) => {
    lines.push(`${'  '.repeat(depth + 1)}${n.region}${depth ? `  (+${n.ms_from_home} ms)` : ''}`);
    for (const c of n.children) walk(c, depth + 1);
  };
  walk(info.tree, 0);
  if (info.unreached.length) lines.push(`not reached     ${info.unreached.join(', ')}`);
  const pre = document.createElement('pre');
  pre.dataset.topic = info.name;
  pre.textContent = lines.join('\n');
  box.replaceChildren(pre);
}

function setBadge(stateName, text) {
  $('badge').dataset.state = stateName;
  $('badge-text').textContent = text;
}

let inFlight = false;
async function refresh() {
  if (inFlight) return;
  inFlight = true;
  try {
    const local = await getJSON(`/status${topic ? `?topic=${encodeURIComponent(topic)}` : ''}`, 5000);
    const peers = await Promise.all(local.regions.filter((r) => !r.self).map((r) =>
      getJSON(`${r.url}/status`, PEER_TIMEOUT_MS).catch(() => null)));
    const view = merge(local, peers.filter((p) => p && p.mesh === local.mesh));
    document.title = `Tern · ${local.mesh} · ${local.region}`;
    $('mesh-name').textContent = `${local.mesh} · seen from ${local.region}`;
    drawGraph(view, local.region);
    drawLinks(view);
    drawRegions(view);
    drawTopic(local.topic);
    const up = view.links.filter((l) => l.state === 'up').length;
    setBadge(local.draining ? 'reconnecting' : 'connected', `${up} of ${view.links.length} links up · updated ${new Date().toLocaleTimeString('en-GB')}`);
    document.body.dataset.updated = String(Date.now());
  } catch (error) {
    setBadge('closed', `this relay does not answer (${error.message})`);
  } finally {
    inFlight = false;
  }
}

$('topic-form').addEventListener('submit', (event) => {
  event.preventDefault();
  topic = $('topic').value.trim();
  const url = new URL(location.href);
  if (topic) url.searchParams.set('topic', topic);
  else url.searchParams.delete('topic');
  history.replaceState(null, '', url);
  if (!topic) $('topic-info').textContent = '';
  refresh();
});

refresh();
setInterval(refresh, REFRESH_MS);
