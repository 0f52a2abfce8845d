/// Test doubles for TernClient: a manual clock, a scripted WebSocket and
/// EventSource, and a recording fetch. Nothing here touches the network.

/// Timers that fire only when the test advances the clock.
export class FakeClock {
  now = 0;
  #timers = new Map();
  #nextId = 1;

  setTimeout = (fn, ms = 0) => {
    const id = this.#nextId++;
    this.#timers.set(id, { at: this.now + Math.max(0, ms), delay: ms, fn });
    return id;
  };

  clearTimeout = (id) => {
    this.#timers.delete(id);
  };

  /// Timers still waiting, soonest first.
  get pending() {
    return [...this.#timers].map(([id, t]) => ({ id, at: t.at, delay: t.delay })).sort((a, b) => a.at - b.at);
  }

  /// Moves time forward by `ms`, firing due timers in order and letting
  /// promise callbacks run after each one.
  async advance(ms) {
    const target = this.now + ms;
    for (;;) {
      await settle();
      const due = [...this.#timers].filter(([, t]) => t.at <= target).sort((a, b) => a[1].at - b[1].at || a[0] - b[0])[0];
      if (!due) break;
      const [id, timer] = due;
      this.#timers.delete(id);
      this.now = timer.at;
      timer.fn();
    }
    this.now = target;
    await settle();
  }
}

/// Lets pending promise callbacks (and the client's async steps) run.
export async function settle() {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

/// A WebSocket class whose instances the test drives by hand.
export function fakeWebSocketClass({ throwOnCreate = false } = {}) {
  class FakeWebSocket {
    static instances = [];
    static throwOnCreate = throwOnCreate;

    constructor(url) {
      if (FakeWebSocket.throwOnCreate) throw new Error('WebSocket blocked');
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedByClient = null;
      FakeWebSocket.instances.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error('not open');
      this.sent.push(JSON.parse(text));
    }

    close(code, reason) {
      this.closedByClient = { code, reason };
      this.readyState = 3;
    }

    /// The relay accepts the connection.
    open() {
      this.readyState = 1;
      this.onopen?.({ type: 'open' });
    }

    /// The relay sends one JSON frame.
    receive(message) {
      this.onmessage?.({ type: 'message', data: JSON.stringify(message) });
    }

    /// The relay (or the network) closes the connection.
    serverClose(code = 1006, reason = '') {
      this.readyState = 3;
      this.onclose?.({ type: 'close', code, reason });
    }

    /// The connection fails before opening, as a browser reports it.
    fail() {
      this.readyState = 3;
      this.onerror?.({ type: 'error' });
      this.onclose?.({ type: 'close', code: 1006, reason: '' });
    }

    /// Frames sent with this op, in order.
    sentOps(op) {
      return this.sent.filter((f) => f.op === op);
    }

    /// Answers the `connect` frame.
    acceptConnect(ok = { client: 'c1', user: 'alice', region: 'eu-west' }) {
      const frame = this.sentOps('connect').at(-1);
      this.receive({ ref: frame.ref, ok });
    }

    /// Opens and completes the handshake.
    handshake(ok) {
      this.open();
      this.acceptConnect(ok);
    }

    /// Answers the last request with this op and topic.
    reply(op, topic, ok) {
      const frame = this.sent.filter((f) => f.op === op && (topic === undefined || f.topic === topic)).at(-1);
      if (!frame) throw new Error(`no ${op} frame for ${topic}`);
      this.receive({ ref: frame.ref, ok });
      return frame;
    }
  }
  return FakeWebSocket;
}

/// An EventSource class whose instances the test drives by hand.
export function fakeEventSourceClass() {
  class FakeEventSource {
    static instances = [];

    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.closed = false;
      this.listeners = new Map();
      FakeEventSource.instances.push(this);
    }

    addEventListener(type, fn) {
      if (!this.listeners.has(type)) this.listeners.set(type, []);
      this.listeners.get(type).push(fn);
    }

    removeEventListener(type, fn) {
      this.listeners.set(type, (this.listeners.get(type) ?? []).filter((f) => f !== fn));
    }

    close() {
      this.closed = true;
      this.readyState = 2;
    }

    dispatch(type, event) {
      for (const fn of this.listeners.get(type) ?? []) fn(event);
    }

    /// The query parameters of the URL.
    get params() {
      return new URL(this.url).searchParams;
    }

    open() {
      this.readyState = 1;
      this.dispatch('open', { type: 'open' });
    }

    /// The relay sends one event, as `event: type`, `data: JSON`, `id: lastEventId`.
    emit(type, data, lastEventId = '') {
      this.dispatch(type, { type, data: JSON.stringify(data), lastEventId });
    }

    /// The stream fails; `closed` means the browser gave up (a non-200 answer).
    fail({ closed = false } = {}) {
      this.readyState = closed ? 2 : 0;
      this.dispatch('error', { type: 'error' });
    }
  }
  return FakeEventSource;
}

/// A fetch that records requests and answers from a script of responses.
export function fakeFetch(responses) {
  const calls = [];
  const script = [...responses];
  const fetch = async (url, init) => {
    calls.push({ url, init, body: init?.body ? JSON.parse(init.body) : undefined });
    const next = script.shift();
    if (!next) throw new Error('no scripted response');
    if (next instanceof Error) throw next;
    return {
      ok: next.status >= 200 && next.status < 300,
      status: next.status,
      json: async () => next.body,
    };
  };
  fetch.calls = calls;
  return fetch;
}

/// Collects a client's events by type.
export function recordEvents(client, types) {
  const log = [];
  for (const type of types) client.addEventListener(type, (event) => log.push({ type, detail: event.detail }));
  log.of = (type) => log.filter((e) => e.type === type).map((e) => e.detail);
  return log;
}
