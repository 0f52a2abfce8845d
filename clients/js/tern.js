/// Tern browser client: WebSocket with Server-Sent Events fallback,
/// reconnect with full-jitter backoff, recovery by position and
/// once-only delivery. See docs/PROTOCOL.md for the wire protocol.

const CLOSE_UNAUTHORIZED = 4001;
const CLOSE_TOKEN_EXPIRED = 4002;
const ERR_INTERNAL = 100;
const ERR_UNAUTHORIZED = 101;
const ERR_BAD_REQUEST = 107;
const ERR_NOT_SUBSCRIBED = 109;
const ERR_ALREADY_SUBSCRIBED = 105;
const ERR_TOKEN_EXPIRED = 111;
const WS_OPEN = 1;
const ES_CLOSED = 2;
const SSE_PUSHES = ['pub', 'volatile', 'join', 'leave', 'gap', 'epoch'];

/// An error reply from the relay, or a request the client could not complete.
/// `code` is the relay's numeric code (0 for errors raised by the client),
/// `codeName` its name (`permission_denied`, ...) or one of the client's own:
/// `connection_lost`, `closed`, `not_available_over_sse`, `http_error`.
export class TernError extends Error {
  constructor(message, { code = 0, codeName = 'client_error', status, topic } = {}) {
    super(message);
    this.name = 'TernError';
    this.code = code;
    this.codeName = codeName;
    if (status !== undefined) this.status = status;
    if (topic !== undefined) this.topic = topic;
  }

  /// Builds an error from the relay's `{"code", "name", "message"}` object.
  static fromRelay(body, extra = {}) {
    const code = typeof body?.code === 'number' ? body.code : 0;
    const codeName = typeof body?.name === 'string' ? body.name : 'unknown';
    const message = typeof body?.message === 'string' && body.message ? body.message : codeName;
    return new TernError(message, { code, codeName, ...extra });
  }
}

/// A reconnect delay in milliseconds: uniformly random in
/// [0, min(maxMs, initialMs * 2^attempt)] (exponential backoff, full jitter).
export function backoffDelay(attempt, { initialMs = 100, maxMs = 10_000 } = {}, random = Math.random) {
  const exponent = Math.min(Math.max(0, attempt | 0), 40);
  const cap = Math.floor(Math.max(0, Math.min(maxMs, initialMs * 2 ** exponent)));
  return Math.min(cap, Math.floor(random() * (cap + 1)));
}

/// Encodes positions by topic as a Tern cursor: `topic|epoch|offset` joined with commas, topics sorted.
export function encodeCursor(positions) {
  const entries = positions instanceof Map ? [...positions] : Object.entries(positions);
  return entries
    .filter(([, p]) => p && typeof p.epoch === 'string' && Number.isInteger(p.offset))
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([topic, p]) => `${topic}|${p.epoch}|${p.offset}`)
    .join(',');
}

/// Decodes a Tern cursor into a Map of topic to position; null when malformed.
export function decodeCursor(text) {
  const out = new Map();
  if (!text) return out;
  for (const part of text.split(',')) {
    const fields = part.split('|');
    if (fields.length !== 3 || !fields[0] || !fields[1] || !/^\d+$/.test(fields[2])) return null;
    out.set(fields[0], { epoch: fields[1], offset: Number(fields[2]) });
  }
  return out;
}

/// The relay's HTTP base URL for a WebSocket URL: `wss://h/ws` gives `https://h`.
export function httpUrlFor(wsUrl) {
  const u = new URL(wsUrl, globalThis.location?.href);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  else if (u.protocol === 'wss:') u.protocol = 'https:';
  u.pathname = u.pathname.replace(/\/ws\/?$/, '');
  u.search = '';
  u.hash = '';
  return u.toString().replace(/\/$/, '');
}

function randomUUIDFallback(random) {
  const bytes = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < 16; i++) bytes[i] = Math.floor(random() * 256);
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function parseJSON(text) {
  if (typeof text !== 'string') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function positionOf(value) {
  if (!value || typeof value.epoch !== 'string' || !Number.isInteger(value.offset)) return null;
  return { epoch: value.epoch, offset: value.offset };
}

const hasEventTarget = typeof globalThis.EventTarget === 'function' && typeof globalThis.Event === 'function';

/// A minimal EventTarget for runtimes without one.
class Emitter {
  #listeners = new Map();

  addEventListener(type, fn) {
    if (!fn) return;
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
  }

  removeEventListener(type, fn) {
    this.#listeners.get(type)?.delete(fn);
  }

  dispatchEvent(event) {
    for (const fn of [...(this.#listeners.get(event.type) ?? [])]) {
      try {
        if (typeof fn === 'function') fn.call(this, event);
        else fn.handleEvent(event);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
    return true;
  }
}

/// The event every listener receives; its payload is in `detail`.
export const TernEvent = hasEventTarget
  ? class TernEvent extends Event {
      constructor(type, detail) {
        super(type);
        this.detail = detail;
      }
    }
  : class TernEvent {
      constructor(type, detail) {
        this.type = type;
        this.detail = detail;
      }
    };

const Base = hasEventTarget ? EventTarget : Emitter;

/// A Tern client: connects over WebSocket (or Server-Sent Events), resubscribes
/// and recovers by position after every reconnect, and delivers each
/// publication once. Events: connected, disconnected, subscribed, publication,
/// join, leave, volatile, resync, epoch, error, state.
export class TernClient extends Base {
  #url;
  #httpUrl;
  #mode;
  #token;
  #backoff;
  #fallbackAfter;
  #connectTimeoutMs;
  #httpRetries;
  #dedupWindowMs;
  #dedupCapacity;
  #WebSocket;
  #EventSource;
  #fetch;
  #setTimeout;
  #clearTimeout;
  #random;
  #now;
  #randomUUID;

  #state = 'idle';
  #transport;
  #stopped = true;
  #gen = 0;
  #attempt = 0;
  #advisedDelay = null;
  #refuseReconnect = null;
  #reconnectTimer = null;
  #connectTimer = null;
  #readyWaiters = [];

  #ws = null;
  #wsOpened = false;
  #handshakeDone = false;
  #wsEverConnected = false;
  #wsFailures = 0;
  #connectError = null;
  #session = null;

  #es = null;
  #esOpened = false;
  #sseReopenQueued = false;

  #nextRef = 1;
  #pending = new Map();
  #queue = [];
  #subs = new Map();

  /// A client for the relay's WebSocket URL, e.g. `wss://relay.example/ws`.
  /// Call `connect()` to start.
  constructor(url, options = {}) {
    super();
    this.#url = url;
    this.#httpUrl = (options.httpUrl ?? httpUrlFor(url)).replace(/\/$/, '');
    this.#mode = options.transport ?? 'auto';
    if (!['auto', 'websocket', 'sse'].includes(this.#mode)) {
      throw new TypeError(`transport must be 'auto', 'websocket' or 'sse', not '${this.#mode}'`);
    }
    this.#token = options.token ?? null;
    this.#backoff = { initialMs: options.backoff?.initialMs ?? 100, maxMs: options.backoff?.maxMs ?? 10_000 };
    this.#fallbackAfter = options.fallbackAfter ?? 2;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 15_000;
    this.#httpRetries = options.httpRetries ?? 4;
    this.#dedupWindowMs = options.dedupWindowMs ?? 120_000;
    this.#dedupCapacity = options.dedupCapacity ?? 1_000;
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.#EventSource = options.EventSource ?? globalThis.EventSource;
    this.#fetch = options.fetch ?? ((...args) => globalThis.fetch(...args));
    this.#setTimeout = options.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
    this.#clearTimeout = options.clearTimeout ?? ((id) => globalThis.clearTimeout(id));
    this.#random = options.random ?? Math.random;
    this.#now = options.now ?? Date.now;
    this.#randomUUID =
      options.randomUUID ??
      (globalThis.crypto?.randomUUID ? () => globalThis.crypto.randomUUID() : () => randomUUIDFallback(this.#random));
    this.#transport = this.#mode === 'sse' ? 'sse' : 'websocket';
  }

  /// `idle`, `connecting`, `connected`, `reconnecting` or `closed`.
  get state() {
    return this.#state;
  }

  /// The transport in use: `websocket` or `sse`.
  get transport() {
    return this.#transport;
  }

  /// The topics subscribed to, in subscription order.
  get topics() {
    return [...this.#subs.keys()];
  }

  /// The last position delivered (or recovered to) for `topic`, or null.
  position(topic) {
    const p = this.#subs.get(topic)?.position;
    return p ? { ...p } : null;
  }

  /// Calls `fn(detail)` for every event of `type`; returns a function that removes it.
  on(type, fn) {
    const listener = (event) => fn(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /// Starts connecting (and keeps reconnecting until `close()` or a refusal).
  /// Resolves once connected; rejects if the client stops before that.
  connect() {
    const ready = new Promise((resolve, reject) => {
      if (this.#state === 'connected') return resolve();
      this.#readyWaiters.push({ resolve, reject });
    });
    ready.catch(() => {});
    if (this.#stopped) {
      this.#stopped = false;
      this.#refuseReconnect = null;
      this.#advisedDelay = null;
      this.#attempt = 0;
      this.#open();
    }
    return ready;
  }

  /// Drops the current connection and reconnects at once, recovering every subscription.
  reconnect() {
    if (this.#stopped) return;
    if (this.#transport === 'websocket' && this.#ws) {
      this.#advisedDelay = 0;
      this.#dropWebSocket(null, 'client reconnect');
    } else if (this.#transport === 'sse' && this.#es) {
      this.#advisedDelay = 0;
      this.#dropEventSource(null, 'client reconnect');
    } else if (this.#reconnectTimer !== null) {
      this.#cancelTimer('reconnect');
      this.#open();
    }
  }

  /// Closes the connection and stops reconnecting. Subscriptions and their
  /// positions are kept, so a later `connect()` resumes where this one stopped.
  close() {
    if (this.#stopped && this.#state === 'closed') return;
    const wasConnected = this.#state === 'connected';
    this.#shutdown(new TernError('the client was closed', { codeName: 'closed' }), { emitError: false });
    if (wasConnected) {
      this.#emit('disconnected', {
        transport: this.#transport, code: 1000, reason: 'client closed', willReconnect: false, delayMs: null,
      });
    }
  }

  /// Subscribes to `topic`; after every reconnect it is resubscribed from the
  /// last delivered position. `since` starts from a position the app kept;
  /// `trace: true` asks for each publication's per-hop timestamps (`trace`).
  /// Resolves with the subscribe reply.
  subscribe(topic, { since, trace = false } = {}) {
    if (this.#subs.has(topic)) {
      return Promise.reject(new TernError(`already subscribed to '${topic}'`, {
        code: ERR_ALREADY_SUBSCRIBED, codeName: 'already_subscribed', topic,
      }));
    }
    return new Promise((resolve, reject) => {
      const sub = { topic, position: positionOf(since), trace: trace === true, active: false, waiters: [{ resolve, reject }], recentIds: new Map() };
      this.#subs.set(topic, sub);
      if (this.#transport === 'sse') {
        this.#sseTopicsChanged();
      } else if (this.#handshakeDone) {
        this.#sendSubscribe(sub);
      }
    });
  }

  /// Stops receiving `topic`. Resolves with `{topic}`.
  unsubscribe(topic) {
    const sub = this.#subs.get(topic);
    if (!sub) {
      return Promise.reject(new TernError(`not subscribed to '${topic}'`, {
        code: ERR_NOT_SUBSCRIBED, codeName: 'not_subscribed', topic,
      }));
    }
    this.#subs.delete(topic);
    this.#settleWaiters(sub, null, new TernError(`unsubscribed from '${topic}'`, { codeName: 'unsubscribed', topic }));
    if (this.#transport === 'sse') {
      this.#sseTopicsChanged();
      return Promise.resolve({ topic });
    }
    if (!this.#handshakeDone) return Promise.resolve({ topic });
    return this.#request({ op: 'unsubscribe', topic }, { kind: 'unsubscribe' });
  }

  /// Publishes `data` (any JSON value) to `topic`. Durable publications carry
  /// an idempotency id (`id`, or a random UUID) and are re-sent with the same
  /// id after a reconnect until answered. Resolves with
  /// `{topic, epoch, offset, duplicate, id}` (volatile: `{topic, duplicate}`).
  publish(topic, data, { id, volatile = false } = {}) {
    if (data === undefined) {
      return Promise.reject(new TernError('publish needs data (any JSON value)', { code: ERR_BAD_REQUEST, codeName: 'bad_request' }));
    }
    const frame = { op: 'publish', topic };
    if (volatile) {
      if (id) frame.id = id;
      frame.data = data;
      frame.volatile = true;
      if (this.#transport === 'sse') return Promise.reject(this.#notOverSse('volatile publish'));
      if (!this.#handshakeDone) {
        return Promise.reject(new TernError('not connected: volatile publications are not kept', { codeName: 'not_connected' }));
      }
      return this.#request(frame, { kind: 'volatile' });
    }
    frame.id = id || this.#randomUUID();
    frame.data = data;
    if (this.#transport === 'sse') return this.#httpPublish(frame);
    return this.#request(frame, { kind: 'publish', resend: true }).then((reply) => ({ ...reply, id: frame.id }));
  }

  /// Lists up to `limit` members of `topic`. Resolves with `{topic, total, truncated, entries}`.
  presence(topic, { limit } = {}) {
    if (this.#transport === 'sse') return Promise.reject(this.#notOverSse('presence'));
    const frame = { op: 'presence', topic };
    if (limit !== undefined) frame.limit = limit;
    return this.#request(frame, { kind: 'presence', resend: true });
  }

  /// Counts the clients and users in `topic`. Resolves with `{topic, clients, users}`.
  presenceStats(topic) {
    if (this.#transport === 'sse') return Promise.reject(this.#notOverSse('presence_stats'));
    return this.#request({ op: 'presence_stats', topic }, { kind: 'presence', resend: true });
  }

  /// Round-trips a ping over the WebSocket.
  ping() {
    if (this.#transport === 'sse') return Promise.reject(this.#notOverSse('ping'));
    return this.#request({ op: 'ping' }, { kind: 'ping' });
  }

  // Connection lifecycle

  #open() {
    if (this.#stopped) return;
    this.#reconnectTimer = null;
    if (this.#transport === 'sse') this.#openEventSource();
    else this.#openWebSocket();
  }

  async #openWebSocket() {
    const gen = ++this.#gen;
    this.#setState('connecting');
    const { token, ok } = await this.#tokenForAttempt(gen);
    if (!ok) return;
    if (typeof this.#WebSocket !== 'function') {
      this.#webSocketUnavailable(new TernError('WebSocket is not available in this runtime', { codeName: 'websocket_unavailable' }));
      return;
    }
    let ws;
    try {
      ws = new this.#WebSocket(this.#url);
    } catch (error) {
      this.#webSocketUnavailable(new TernError(`the WebSocket could not be created: ${error?.message ?? error}`, {
        codeName: 'websocket_unavailable',
      }));
      return;
    }
    this.#ws = ws;
    this.#wsOpened = false;
    this.#handshakeDone = false;
    this.#connectError = null;
    this.#session = null;
    this.#startTimer('connect', this.#connectTimeoutMs, () => {
      if (this.#ws === ws && !this.#handshakeDone) this.#dropWebSocket(null, 'connect timeout');
    });
    ws.onopen = () => {
      if (this.#ws !== ws) return;
      this.#wsOpened = true;
      this.#wsFailures = 0;
      const frame = { op: 'connect' };
      if (token) frame.token = token;
      const ref = this.#nextRef++;
      this.#pending.set(ref, { kind: 'connect', frame });
      this.#sendFrame(ws, { ref, ...frame });
    };
    ws.onmessage = (event) => {
      if (this.#ws !== ws) return;
      const message = parseJSON(event.data);
      if (message && typeof message === 'object') this.#onMessage(message);
    };
    ws.onerror = () => {};
    ws.onclose = (event) => {
      if (this.#ws !== ws) return;
      this.#ws = null;
      this.#webSocketClosed(event?.code ?? null, event?.reason ?? '');
    };
  }

  #webSocketUnavailable(error) {
    this.#ws = null;
    if (this.#mode === 'auto' && this.#canUseEventSource()) {
      this.#switchToSse(error.message);
      return;
    }
    this.#emitError(error);
    this.#connectionLost({ code: null, reason: error.message, handshakeDone: false });
  }

  #canUseEventSource() {
    return typeof this.#EventSource === 'function';
  }

  #switchToSse(reason) {
    this.#transport = 'sse';
    this.#handshakeDone = false;
    this.#setState('connecting', reason);
    const queued = this.#queue.splice(0);
    for (const req of queued) {
      if (req.kind === 'publish') this.#httpPublish(req.frame).then(req.resolve, req.reject);
      else req.reject(this.#notOverSse(req.frame.op));
    }
    this.#open();
  }

  /// Closes the current WebSocket as the client's own decision and handles the loss at once.
  #dropWebSocket(code, reason) {
    const ws = this.#ws;
    if (!ws) return;
    this.#ws = null;
    try {
      ws.close(1000, reason);
    } catch {}
    this.#webSocketClosed(code, reason);
  }

  #webSocketClosed(code, reason) {
    this.#cancelTimer('connect');
    const handshakeDone = this.#handshakeDone;
    const opened = this.#wsOpened;
    this.#handshakeDone = false;
    this.#wsOpened = false;
    this.#failPending();
    const connectError = this.#connectError;
    this.#connectError = null;
    if (code === CLOSE_UNAUTHORIZED || connectError?.code === ERR_UNAUTHORIZED) {
      const message = (typeof connectError?.message === 'string' && connectError.message) || reason || 'unauthorized';
      this.#refuseReconnect = new TernError(message, { code: CLOSE_UNAUTHORIZED, codeName: 'unauthorized' });
    } else if ((code === CLOSE_TOKEN_EXPIRED || connectError?.code === ERR_TOKEN_EXPIRED) && typeof this.#token !== 'function') {
      this.#refuseReconnect = new TernError('the token expired and no token callback can refresh it', {
        code: CLOSE_TOKEN_EXPIRED, codeName: 'token_expired',
      });
    }
    if (!opened && !handshakeDone) this.#wsFailures += 1;
    if (
      !this.#refuseReconnect &&
      this.#mode === 'auto' &&
      !this.#wsEverConnected &&
      this.#wsFailures >= this.#fallbackAfter &&
      this.#canUseEventSource()
    ) {
      this.#attempt = 0;
      this.#advisedDelay = null;
      this.#switchToSse(`the WebSocket failed ${this.#wsFailures} times before opening`);
      return;
    }
    this.#connectionLost({ code, reason, handshakeDone });
  }

  /// Handles any lost or failed connection: reconnect after the advised delay or backoff, or stop.
  #connectionLost({ code, reason, handshakeDone }) {
    if (this.#stopped) return;
    this.#attempt = handshakeDone ? 0 : this.#attempt + 1;
    const refusal = this.#refuseReconnect;
    if (refusal) {
      const wasConnected = this.#state === 'connected';
      this.#shutdown(refusal, { emitError: true });
      if (wasConnected || handshakeDone || code !== null) {
        this.#emit('disconnected', { transport: this.#transport, code, reason, willReconnect: false, delayMs: null });
      }
      return;
    }
    const delayMs = this.#advisedDelay ?? backoffDelay(this.#attempt, this.#backoff, this.#random);
    this.#advisedDelay = null;
    this.#setState('reconnecting');
    this.#emit('disconnected', { transport: this.#transport, code, reason, willReconnect: true, delayMs });
    this.#reconnectTimer = this.#setTimeout(() => this.#open(), delayMs);
  }

  #shutdown(error, { emitError }) {
    this.#stopped = true;
    this.#gen += 1;
    this.#cancelTimer('reconnect');
    this.#cancelTimer('connect');
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      try {
        ws.close(1000, 'client closed');
      } catch {}
    }
    this.#closeEventSource();
    this.#handshakeDone = false;
    this.#wsOpened = false;
    for (const [, req] of this.#pending) req.reject?.(error);
    this.#pending.clear();
    for (const req of this.#queue.splice(0)) req.reject(error);
    for (const sub of this.#subs.values()) {
      sub.active = false;
      this.#settleWaiters(sub, null, error);
    }
    for (const w of this.#readyWaiters.splice(0)) w.reject(error);
    this.#setState('closed');
    if (emitError) this.#emitError(error);
  }

  /// Moves requests that were waiting for a reply: idempotent ones wait for the next connection.
  #failPending() {
    const lost = new TernError('the connection closed before the reply arrived', { codeName: 'connection_lost' });
    const resend = [];
    for (const [, req] of [...this.#pending].sort(([a], [b]) => a - b)) {
      if (req.kind === 'connect' || req.kind === 'subscribe') continue;
      if (req.kind === 'unsubscribe') req.resolve({ topic: req.frame.topic });
      else if (req.resend) resend.push(req);
      else req.reject(lost);
    }
    this.#pending.clear();
    this.#queue.unshift(...resend);
    for (const sub of this.#subs.values()) sub.active = false;
  }

  #onConnected(reply) {
    this.#cancelTimer('connect');
    this.#handshakeDone = true;
    this.#wsEverConnected = true;
    this.#attempt = 0;
    this.#session = { client: reply.client ?? null, user: reply.user ?? null, region: reply.region ?? null };
    this.#setState('connected');
    this.#emit('connected', { transport: 'websocket', ...this.#session });
    for (const w of this.#readyWaiters.splice(0)) w.resolve();
    for (const sub of this.#subs.values()) {
      if (this.#ws && this.#handshakeDone) this.#sendSubscribe(sub);
    }
    for (const req of this.#queue.splice(0)) {
      if (this.#ws && this.#handshakeDone) this.#sendRequest(req);
      else this.#queue.push(req);
    }
  }

  // WebSocket requests and messages

  #request(frame, { kind, resend = false }) {
    if (this.#stopped && this.#state === 'closed') {
      return Promise.reject(new TernError('the client is closed', { codeName: 'closed' }));
    }
    return new Promise((resolve, reject) => {
      const req = { kind, frame, resend, resolve, reject };
      if (this.#ws && this.#handshakeDone) this.#sendRequest(req);
      else this.#queue.push(req);
    });
  }

  #sendRequest(req) {
    const ref = this.#nextRef++;
    this.#pending.set(ref, req);
    this.#sendFrame(this.#ws, { ref, ...req.frame });
  }

  #sendSubscribe(sub) {
    const frame = { op: 'subscribe', topic: sub.topic };
    if (sub.trace) frame.trace = true;
    if (sub.position) frame.since = { epoch: sub.position.epoch, offset: sub.position.offset };
    const ref = this.#nextRef++;
    this.#pending.set(ref, { kind: 'subscribe', frame, sub });
    this.#sendFrame(this.#ws, { ref, ...frame });
  }

  #sendFrame(ws, frame) {
    try {
      ws.send(JSON.stringify(frame));
    } catch {
      if (this.#ws === ws) this.#dropWebSocket(null, 'send failed');
    }
  }

  #onMessage(message) {
    if (message.ref !== undefined && message.ref !== null) {
      const req = this.#pending.get(message.ref);
      if (!req) return;
      this.#pending.delete(message.ref);
      this.#onReply(req, message);
      return;
    }
    if (message.error) {
      this.#emitError(TernError.fromRelay(message.error));
      return;
    }
    if (typeof message.push === 'string') this.#onPush(message);
  }

  #onReply(req, message) {
    const ok = message.ok;
    const error = message.error ? TernError.fromRelay(message.error) : null;
    switch (req.kind) {
      case 'connect':
        if (ok) this.#onConnected(ok);
        else {
          this.#connectError = message.error ?? {};
          if (error.code !== ERR_UNAUTHORIZED && error.code !== ERR_TOKEN_EXPIRED) this.#dropWebSocket(null, error.message);
        }
        return;
      case 'subscribe':
        if (this.#subs.get(req.sub.topic) !== req.sub) return;
        if (ok) this.#applySubscribed(req.sub, ok);
        else this.#subscribeFailed(req.sub, error);
        return;
      default:
        if (ok) req.resolve(ok);
        else req.reject(error ?? new TernError('malformed reply', { codeName: 'bad_reply' }));
    }
  }

  #subscribeFailed(sub, error) {
    error.topic = sub.topic;
    if (error.code === ERR_INTERNAL && sub.waiters.length === 0 && this.#transport === 'websocket') {
      const ws = this.#ws;
      this.#setTimeout(() => {
        if (this.#ws === ws && this.#handshakeDone && this.#subs.get(sub.topic) === sub && !sub.active) this.#sendSubscribe(sub);
      }, backoffDelay(1, this.#backoff, this.#random));
      this.#emitError(error);
      return;
    }
    this.#subs.delete(sub.topic);
    if (sub.waiters.length) this.#settleWaiters(sub, null, error);
    else this.#emitError(error);
  }

  #applySubscribed(sub, reply) {
    const position = positionOf(reply);
    sub.active = true;
    const recovered = typeof reply.recovered === 'boolean' ? reply.recovered : undefined;
    if (recovered !== true && position) sub.position = position;
    this.#emit('subscribed', { topic: sub.topic, position: sub.position ? { ...sub.position } : null, recovered });
    if (recovered === true && Array.isArray(reply.publications)) {
      for (const p of reply.publications) this.#deliver({ ...p, topic: p.topic ?? sub.topic });
    }
    if (recovered === false) {
      this.#emit('resync', { topic: sub.topic, reason: reply.reason ?? 'unknown', position: position ? { ...position } : null });
    }
    this.#settleWaiters(sub, reply, null);
  }

  #settleWaiters(sub, reply, error) {
    for (const w of sub.waiters.splice(0)) {
      if (error) w.reject(error);
      else w.resolve(reply);
    }
  }

  #onPush(message) {
    switch (message.push) {
      case 'pub':
        this.#deliver(message);
        return;
      case 'volatile':
        this.#emit('volatile', { topic: message.topic, user: message.user, data: message.data });
        return;
      case 'join':
      case 'leave':
        this.#emit(message.push, { topic: message.topic, client: message.client, user: message.user, region: message.region });
        return;
      case 'gap': {
        const position = positionOf(message);
        const sub = this.#subs.get(message.topic);
        if (!sub || !position) return;
        sub.position = position;
        this.#emit('resync', { topic: message.topic, reason: message.reason ?? 'unknown', position: { ...position } });
        return;
      }
      case 'epoch': {
        const position = positionOf(message);
        const sub = this.#subs.get(message.topic);
        if (!sub || !position) return;
        const previous = sub.position;
        sub.position = position;
        this.#emit('epoch', { topic: message.topic, position: { ...position }, previous: previous ? { ...previous } : null });
        return;
      }
      case 'disconnect':
        if (Number.isFinite(message.reconnect_after_ms)) this.#advisedDelay = Math.max(0, message.reconnect_after_ms);
        if (message.reconnect === false) {
          this.#refuseReconnect = new TernError(message.reason || 'the relay asked not to reconnect', {
            code: message.code ?? 0, codeName: 'disconnect',
          });
        }
        return;
      default:
    }
  }

  /// Emits a publication unless its position (or, across epochs, its id) was already delivered.
  #deliver(p) {
    const sub = this.#subs.get(p.topic);
    const position = positionOf(p);
    if (!sub || !position) return;
    const last = sub.position;
    if (last && last.epoch === position.epoch && position.offset <= last.offset) return;
    sub.position = position;
    if (typeof p.id === 'string' && p.id) {
      const now = this.#now();
      const seen = sub.recentIds.get(p.id);
      if (seen && seen.epoch !== position.epoch && now - seen.at <= this.#dedupWindowMs) return;
      sub.recentIds.delete(p.id);
      sub.recentIds.set(p.id, { epoch: position.epoch, at: now });
      if (sub.recentIds.size > this.#dedupCapacity) sub.recentIds.delete(sub.recentIds.keys().next().value);
    }
    const detail = { topic: p.topic, epoch: position.epoch, offset: position.offset, position: { ...position }, data: p.data };
    if (typeof p.id === 'string' && p.id) detail.id = p.id;
    if (typeof p.user === 'string') detail.user = p.user;
    if (Array.isArray(p.trace)) detail.trace = p.trace.map((h) => ({ region: h.region, step: h.step, at: h.at }));
    this.#emit('publication', detail);
  }

  // Server-Sent Events

  #sseTopicsChanged() {
    if (this.#stopped || this.#reconnectTimer !== null || this.#sseReopenQueued) return;
    this.#sseReopenQueued = true;
    queueMicrotask(() => {
      this.#sseReopenQueued = false;
      if (!this.#stopped && this.#transport === 'sse' && this.#reconnectTimer === null) this.#openEventSource();
    });
  }

  async #openEventSource() {
    const gen = ++this.#gen;
    this.#closeEventSource();
    const topics = [...this.#subs.keys()];
    for (const sub of this.#subs.values()) sub.active = false;
    if (topics.length === 0) {
      this.#sseReady();
      return;
    }
    if (this.#state !== 'connected') this.#setState('connecting');
    if (!this.#canUseEventSource()) {
      this.#refuseReconnect = new TernError('EventSource is not available in this runtime', { codeName: 'sse_unavailable' });
      this.#connectionLost({ code: null, reason: 'EventSource is not available', handshakeDone: false });
      return;
    }
    const { token, ok } = await this.#tokenForAttempt(gen);
    if (!ok) return;
    let es;
    try {
      es = new this.#EventSource(this.#sseUrl(topics, token));
    } catch (error) {
      this.#emitError(new TernError(`the EventSource could not be created: ${error?.message ?? error}`, { codeName: 'sse_unavailable' }));
      this.#connectionLost({ code: null, reason: 'EventSource failed', handshakeDone: false });
      return;
    }
    this.#es = es;
    this.#esOpened = false;
    const current = (fn) => (event) => {
      if (this.#es === es) fn(event);
    };
    es.addEventListener('open', current(() => {
      this.#esOpened = true;
      this.#attempt = 0;
      this.#sseReady();
    }));
    for (const type of SSE_PUSHES) {
      es.addEventListener(type, current((event) => {
        const message = parseJSON(event.data);
        if (message && typeof message === 'object') this.#onPush({ push: type, ...message });
      }));
    }
    es.addEventListener('subscribed', current((event) => {
      const message = parseJSON(event.data);
      const reply = message?.ok ?? message;
      const sub = reply && this.#subs.get(reply.topic);
      if (sub) this.#applySubscribed(sub, reply);
    }));
    es.addEventListener('disconnect', current((event) => {
      const message = parseJSON(event.data) ?? {};
      this.#onPush({ ...message, push: 'disconnect' });
      this.#dropEventSource(message.code ?? null, message.reason ?? 'disconnect');
    }));
    es.addEventListener('error', current((event) => {
      if (typeof event?.data === 'string') this.#onSseError(parseJSON(event.data));
      else if (es.readyState === ES_CLOSED) this.#dropEventSource(null, 'the event stream failed');
      else if (this.#state === 'connected') {
        this.#setState('connecting');
        this.#emit('disconnected', { transport: 'sse', code: null, reason: 'the event stream is reconnecting', willReconnect: true, delayMs: null });
      }
    }));
  }

  #sseUrl(topics, token) {
    const params = topics.map((t) => `topic=${encodeURIComponent(t)}`);
    if (token) params.push(`token=${encodeURIComponent(token)}`);
    const cursor = encodeCursor(new Map([...this.#subs].map(([t, s]) => [t, s.position])));
    if (cursor) params.push(`since=${encodeURIComponent(cursor)}`);
    // One EventSource carries every topic, so tracing is asked for the stream as a whole.
    if ([...this.#subs.values()].some((s) => s.trace)) params.push('trace=1');
    return `${this.#httpUrl}/sse?${params.join('&')}`;
  }

  #sseReady() {
    if (this.#state === 'connected') return;
    this.#setState('connected');
    this.#emit('connected', { transport: 'sse', client: null, user: null, region: null });
    for (const w of this.#readyWaiters.splice(0)) w.resolve();
  }

  #onSseError(message) {
    const body = { ...(message?.error ?? message ?? {}) };
    if (typeof message?.topic === 'string' && body.topic === undefined) body.topic = message.topic;
    const error = TernError.fromRelay(body);
    if (error.code === ERR_UNAUTHORIZED) {
      this.#refuseReconnect = new TernError(error.message, { code: CLOSE_UNAUTHORIZED, codeName: 'unauthorized' });
      this.#dropEventSource(CLOSE_UNAUTHORIZED, error.message);
      return;
    }
    if (error.code === ERR_TOKEN_EXPIRED) {
      if (typeof this.#token !== 'function') {
        this.#refuseReconnect = new TernError('the token expired and no token callback can refresh it', {
          code: CLOSE_TOKEN_EXPIRED, codeName: 'token_expired',
        });
      }
      this.#dropEventSource(CLOSE_TOKEN_EXPIRED, error.message);
      return;
    }
    const sub = this.#subscriptionFor(body);
    if (sub) this.#subscribeFailed(sub, error);
    else this.#emitError(error);
  }

  /// The not-yet-active subscription an SSE error is about: its `topic` field,
  /// else the one whose name the message quotes, else the only pending one.
  #subscriptionFor(body) {
    if (typeof body.topic === 'string') {
      const sub = this.#subs.get(body.topic);
      return sub && !sub.active ? sub : null;
    }
    const pending = [...this.#subs.values()].filter((s) => !s.active);
    const message = typeof body.message === 'string' ? body.message : '';
    return pending.find((s) => message.includes(`'${s.topic}'`)) ?? (pending.length === 1 ? pending[0] : null);
  }

  #dropEventSource(code, reason) {
    const es = this.#es;
    if (!es) return;
    const opened = this.#esOpened;
    this.#closeEventSource();
    for (const sub of this.#subs.values()) sub.active = false;
    this.#connectionLost({ code, reason, handshakeDone: opened });
  }

  #closeEventSource() {
    const es = this.#es;
    this.#es = null;
    this.#esOpened = false;
    if (es) {
      try {
        es.close();
      } catch {}
    }
  }

  async #httpPublish(frame) {
    const body = JSON.stringify({ topic: frame.topic, id: frame.id, data: frame.data });
    let lastError = null;
    let refreshed = false;
    for (let attempt = 0; attempt <= this.#httpRetries; attempt++) {
      if (attempt > 0) await this.#sleep(backoffDelay(attempt, this.#backoff, this.#random));
      if (this.#stopped && this.#state === 'closed') throw new TernError('the client is closed', { codeName: 'closed' });
      const token = await this.#resolveToken();
      const headers = { 'Content-Type': 'application/json' };
      if (token) headers.Authorization = `Bearer ${token}`;
      let response;
      try {
        response = await this.#fetch(`${this.#httpUrl}/api/publish`, { method: 'POST', headers, body });
      } catch (error) {
        lastError = new TernError(`publish request failed: ${error?.message ?? error}`, { codeName: 'connection_lost' });
        continue;
      }
      let reply = null;
      try {
        reply = await response.json();
      } catch {}
      if (response.ok && reply && typeof reply === 'object') return { ...reply, id: frame.id };
      const error = reply?.error
        ? TernError.fromRelay(reply.error, { status: response.status })
        : new TernError(`publish failed with HTTP ${response.status}`, { codeName: 'http_error', status: response.status });
      if (response.status === 503 || (response.status >= 500 && !reply?.error)) {
        lastError = error;
        continue;
      }
      if (error.code === ERR_TOKEN_EXPIRED && typeof this.#token === 'function' && !refreshed) {
        refreshed = true;
        attempt -= 1;
        continue;
      }
      throw error;
    }
    throw lastError;
  }

  // Helpers

  #notOverSse(what) {
    return new TernError(`${what} is not available over SSE`, { codeName: 'not_available_over_sse' });
  }

  /** Resolves the token for connection attempt `gen`; `ok` is false when the attempt is over. */
  async #tokenForAttempt(gen) {
    let token;
    try {
      token = await this.#resolveToken();
    } catch (error) {
      if (gen !== this.#gen || this.#stopped) return { token: undefined, ok: false };
      this.#emitError(new TernError(`the token callback failed: ${error?.message ?? error}`, { codeName: 'token_error' }));
      this.#connectionLost({ code: null, reason: 'token callback failed', handshakeDone: false });
      return { token: undefined, ok: false };
    }
    if (gen !== this.#gen || this.#stopped) return { token: undefined, ok: false };
    return { token, ok: true };
  }

  async #resolveToken() {
    const token = typeof this.#token === 'function' ? await this.#token() : this.#token;
    return token ? String(token) : null;
  }

  #sleep(ms) {
    return new Promise((resolve) => this.#setTimeout(resolve, ms));
  }

  #startTimer(which, ms, fn) {
    this.#cancelTimer(which);
    if (!(ms > 0)) return;
    const id = this.#setTimeout(fn, ms);
    if (which === 'connect') this.#connectTimer = id;
  }

  #cancelTimer(which) {
    if (which === 'connect' && this.#connectTimer !== null) {
      this.#clearTimeout(this.#connectTimer);
      this.#connectTimer = null;
    }
    if (which === 'reconnect' && this.#reconnectTimer !== null) {
      this.#clearTimeout(this.#reconnectTimer);
      this.#reconnectTimer = null;
    }
  }

  #setState(state, reason) {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    const detail = { state, previous, transport: this.#transport };
    if (reason) detail.reason = reason;
    this.#emit('state', detail);
  }

  #emitError(error) {
    this.#emit('error', error);
  }

  #emit(type, detail) {
    this.dispatchEvent(new TernEvent(type, detail));
  }
}
