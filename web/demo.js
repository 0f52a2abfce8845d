// The Tern demo room: a chat on one topic of the `room` namespace, with
// presence (who is here, from which region), typing indicators sent as
// volatile publishes, and a notice when missed messages cannot be recovered.
// It uses the JavaScript client exactly as an application would.
import { TernClient } from '/client/tern.js';

const params = new URLSearchParams(location.search);
const roomName = (params.get('room') || 'lobby').replace(/[^A-Za-z0-9_.@/-]/g, '-');
const topic = `room:${roomName}`;
const transportMode = ['auto', 'websocket', 'sse'].includes(params.get('transport')) ? params.get('transport') : 'auto';
const fixedToken = params.get('token');
const TYPING_EVERY_MS = 1500;
const TYPING_SHOWN_MS = 3000;
const MAX_MESSAGES = 500;

const $ = (id) => document.getElementById(id);
const ui = {
  badge: $('badge'), badgeText: $('badge-text'), notices: $('notices'), join: $('join'), name: $('name'),
  joinButton: $('join-button'), messages: $('messages'), typing: $('typing'), compose: $('compose'),
  text: $('text'), send: $('send'), presence: $('presence'), presenceNote: $('presence-note'),
  roomName: $('room-name'), otherRegions: $('other-regions'),
};

/// What the page knows; rendering reads only this.
const state = {
  region: null, // the region of the relay this page was loaded from
  me: null, // our user name once joined
  myClient: null, // our connection's id (WebSocket only)
  client: null,
  members: new Map(), // `${region}/${client}` -> {client, user, region}; client ids are per relay
  typing: new Map(), // user -> timeout id
  lastTypingSent: 0,
};

ui.roomName.textContent = topic;
ui.name.value = params.get('name') || localStorage.getItem('tern-demo-name') || `guest-${Math.floor(Math.random() * 9000 + 1000)}`;

fetch('/health')
  .then((r) => r.json())
  .then((health) => {
    state.region = health.region;
    renderBadge();
  })
  .catch(() => {});

// Links to the same room on the other regions of the mesh.
fetch('/status')
  .then((r) => r.json())
  .then((status) => {
    const others = (status.regions || []).filter((r) => !r.self);
    ui.otherRegions.textContent = others.length ? 'same room on: ' : '';
    for (const r of others) {
      const a = document.createElement('a');
      a.href = `${r.url}/?room=${encodeURIComponent(roomName)}`;
      a.textContent = r.name;
      ui.otherRegions.append(a);
    }
  })
  .catch(() => {});

function notice(text, kind = 'warn', key) {
  if (key) document.querySelector(`.notice[data-key="${key}"]`)?.remove();
  const div = document.createElement('div');
  div.className = `notice ${kind}`;
  if (key) div.dataset.key = key;
  div.textContent = text;
  ui.notices.append(div);
  return div;
}

function renderBadge() {
  const client = state.client;
  const s = client ? client.state : 'idle';
  ui.badge.dataset.state = s;
  ui.badge.dataset.region = state.region ?? '';
  ui.badge.dataset.transport = client ? client.transport : '';
  const where = state.region ? ` · ${state.region}` : '';
  const how = client ? ` · ${client.transport === 'sse' ? 'Server-Sent Events' : 'WebSocket'}` : '';
  const words = { idle: 'not joined', connecting: 'connecting', connected: 'connected', reconnecting: 'reconnecting', closed: 'offline' };
  ui.badgeText.textContent = `${words[s] ?? s}${where}${how}`;
}

/// The regions a message passed through: from its per-hop trace (the relay it was published to,
/// the topic's home, each region down the fan-out tree), else the sender's region and this one.
function routeOf(p) {
  const hops = [];
  const traced = Array.isArray(p.trace) && p.trace.length > 1;
  const origin = typeof p.data?.region === 'string' ? p.data.region : null;
  if (origin && !traced) hops.push(origin);
  if (Array.isArray(p.trace)) {
    for (const hop of p.trace) if (hop && typeof hop.region === 'string' && hop.region !== hops.at(-1)) hops.push(hop.region);
  }
  if (state.region && hops.at(-1) !== state.region) hops.push(state.region);
  return hops;
}

/// Where the message waited: each hop with the time since the previous one (by each relay's own
/// clock, so cross-region steps include clock skew), then the time until this browser showed it.
function waitsOf(p, shownAt) {
  if (!Array.isArray(p.trace) || p.trace.length === 0) return [];
  const steps = [];
  let previous = null;
  for (const hop of p.trace) {
    if (!hop || typeof hop.at !== 'number') continue;
    steps.push({ label: `${hop.step} in ${hop.region}`, ms: previous === null ? null : hop.at - previous, at: hop.at });
    previous = hop.at;
  }
  if (previous !== null) steps.push({ label: 'shown here', ms: shownAt - previous, at: shownAt });
  return steps;
}

function formatWait(ms) {
  if (ms === null) return '';
  const sign = ms < 0 ? '−' : '+';
  const v = Math.abs(ms);
  return `${sign}${v < 10 ? v.toFixed(1) : Math.round(v)} ms `;
}

function addMessage(p) {
  const data = p.data;
  const li = document.createElement('li');
  li.className = 'msg';
  if (p.id) li.dataset.id = p.id;
  li.dataset.offset = String(p.offset);
  li.dataset.epoch = p.epoch;
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = p.user || data.name || 'someone';
  if (state.me && who.textContent === state.me) li.classList.add('mine');
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = String(data.text ?? '');
  const route = document.createElement('span');
  route.className = 'route';
  route.textContent = routeOf(p).join(' → ');
  li.append(who, text, route);
  const waits = waitsOf(p, Date.now());
  if (waits.length > 0) {
    const hops = document.createElement('span');
    hops.className = 'hops';
    hops.textContent = waits.map((w) => `${formatWait(w.ms)}${w.label}`).join(' · ');
    hops.title = waits.map((w) => `${new Date(w.at).toISOString()}  ${w.label}`).join('\n');
    li.append(hops);
  }
  const atBottom = ui.messages.scrollTop + ui.messages.clientHeight >= ui.messages.scrollHeight - 4;
  ui.messages.append(li);
  while (ui.messages.children.length > MAX_MESSAGES) ui.messages.firstElementChild.remove();
  if (atBottom) ui.messages.scrollTop = ui.messages.scrollHeight;
}

/// Presence entries are named by their region and the connection's id there.
function memberKey(m) {
  return `${m.region}/${m.client}`;
}

function renderPresence() {
  ui.presence.replaceChildren();
  const entries = [...state.members.values()].sort((a, b) => (a.user + a.region + a.client).localeCompare(b.user + b.region + b.client));
  for (const m of entries) {
    const li = document.createElement('li');
    li.dataset.user = m.user;
    li.dataset.region = m.region;
    li.dataset.client = m.client;
    const name = document.createElement('span');
    name.textContent = m.user + (m.client === state.myClient && m.region === state.region ? ' (you)' : '');
    const region = document.createElement('span');
    region.className = 'region';
    region.textContent = m.region;
    li.append(name, region);
    ui.presence.append(li);
  }
}

async function refreshPresence() {
  const client = state.client;
  if (!client) return;
  if (client.transport !== 'websocket') {
    ui.presenceNote.textContent = 'Over Server-Sent Events the list shows who joined or left since you came in.';
    if (state.me && ![...state.members.values()].some((m) => m.user === state.me && m.region === state.region)) {
      state.members.set('self', { client: 'self', user: state.me, region: state.region ?? '?' });
      renderPresence();
    }
    return;
  }
  try {
    const reply = await client.presence(topic, { limit: 200 });
    state.members = new Map(reply.entries.map((e) => [memberKey(e), e]));
    ui.presenceNote.textContent = reply.truncated ? `${reply.total} here; showing ${reply.entries.length}` : '';
    renderPresence();
  } catch (error) {
    ui.presenceNote.textContent = `presence unavailable: ${error.message}`;
  }
}

function showTyping(user) {
  if (!user || user === state.me) return;
  clearTimeout(state.typing.get(user));
  state.typing.set(user, setTimeout(() => {
    state.typing.delete(user);
    renderTyping();
  }, TYPING_SHOWN_MS));
  renderTyping();
}

function renderTyping() {
  const users = [...state.typing.keys()].sort();
  ui.typing.textContent = users.length === 0 ? '' : `${users.join(', ')} ${users.length === 1 ? 'is' : 'are'} typing…`;
}

async function token() {
  if (fixedToken) return fixedToken;
  const response = await fetch(`/dev/token?user=${encodeURIComponent(state.me)}`, { cache: 'no-store' });
  if (!response.ok) {
    const why = (await response.text()).trim();
    notice(`No token: ${why}. Open the page with ?token=YOUR_TOKEN.`, 'error', 'token');
    throw new Error(why || `HTTP ${response.status}`);
  }
  document.querySelector('.notice[data-key="token"]')?.remove();
  return (await response.json()).token;
}

function join(name) {
  state.me = name;
  localStorage.setItem('tern-demo-name', name);
  ui.name.disabled = true;
  ui.joinButton.disabled = true;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const client = new TernClient(`${scheme}://${location.host}/ws`, {
    token,
    transport: transportMode,
    backoff: { initialMs: 200, maxMs: 3000 },
  });
  state.client = client;
  window.ternDemo = { client, topic, state };

  client.on('state', renderBadge);
  client.on('connected', (detail) => {
    state.myClient = detail.client;
    if (detail.region) state.region = detail.region;
    document.querySelector('.notice[data-key="offline"]')?.remove();
    ui.text.disabled = false;
    ui.send.disabled = false;
    renderBadge();
  });
  client.on('disconnected', ({ willReconnect, delayMs, reason }) => {
    renderBadge();
    if (!willReconnect) {
      notice(`Disconnected: ${reason || 'the relay closed the connection'}.`, 'error', 'offline');
      ui.text.disabled = true;
      ui.send.disabled = true;
    }
    if (willReconnect) ui.badgeText.textContent += delayMs ? ` in ${(delayMs / 1000).toFixed(1)}s` : '';
  });
  client.on('subscribed', refreshPresence);
  client.on('publication', (p) => {
    if (p.topic !== topic || !p.data || typeof p.data !== 'object') return;
    if (p.data.type === 'chat') {
      addMessage(p);
      const sender = p.user || p.data.name;
      if (state.typing.has(sender)) {
        clearTimeout(state.typing.get(sender));
        state.typing.delete(sender);
        renderTyping();
      }
    }
  });
  client.on('volatile', (v) => {
    if (v.topic === topic && v.data?.type === 'typing') showTyping(v.user || v.data.name);
  });
  client.on('join', (m) => {
    if (m.topic !== topic) return;
    state.members.delete('self');
    state.members.set(memberKey(m), { client: m.client, user: m.user, region: m.region });
    renderPresence();
  });
  client.on('leave', (m) => {
    if (m.topic !== topic) return;
    state.members.delete(memberKey(m));
    renderPresence();
  });
  client.on('resync', ({ reason }) => {
    notice(`Some messages sent while you were away could not be recovered (${reason}); the list may have a gap.`, 'warn resync', 'resync');
  });
  client.on('epoch', () => {
    notice('The room moved to another region for a while (a failover); nothing was lost.', 'info', 'epoch');
  });
  client.on('error', (error) => {
    if (error.codeName === 'token_error') return;
    notice(`${error.codeName}: ${error.message}`, 'error', `error-${error.codeName}`);
  });

  renderBadge();
  client.connect().catch(() => {});
  // `trace: true`: every message carries the relays it passed and when, to show where it waited.
  client.subscribe(topic, { trace: true }).catch((error) => notice(`Could not join ${topic}: ${error.message}`, 'error', 'subscribe'));
  ui.text.focus();
}

ui.join.addEventListener('submit', (event) => {
  event.preventDefault();
  const name = ui.name.value.trim();
  if (name && !state.client) join(name);
});

ui.compose.addEventListener('submit', async (event) => {
  event.preventDefault();
  const text = ui.text.value.trim();
  if (!text || !state.client) return;
  ui.text.value = '';
  try {
    await state.client.publish(topic, { type: 'chat', text, name: state.me, region: state.region });
  } catch (error) {
    notice(`Not sent: ${error.message}`, 'error', 'send');
    ui.text.value = text;
  }
});

ui.text.addEventListener('input', () => {
  const client = state.client;
  const now = Date.now();
  if (!client || client.transport !== 'websocket' || client.state !== 'connected') return;
  if (now - state.lastTypingSent < TYPING_EVERY_MS || !ui.text.value) return;
  state.lastTypingSent = now;
  client.publish(topic, { type: 'typing', name: state.me }, { volatile: true }).catch(() => {});
});

if (params.get('join') === '1') join(ui.name.value.trim() || 'guest');
