import test from 'node:test';
import assert from 'node:assert/strict';
import { TernClient, TernError } from '../tern.js';
import { FakeClock, fakeWebSocketClass, fakeEventSourceClass, recordEvents, settle } from '../testing/fakes.mjs';

const EVENTS = ['connected', 'disconnected', 'subscribed', 'publication', 'join', 'leave', 'volatile', 'resync', 'epoch', 'error', 'state'];

function setup(options = {}) {
  const clock = new FakeClock();
  const WebSocket = fakeWebSocketClass();
  let uuid = 0;
  const client = new TernClient('ws://relay.test/ws', {
    transport: 'websocket',
    token: 'tok',
    WebSocket,
    EventSource: undefined,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    now: () => clock.now,
    randomUUID: () => `uuid-${++uuid}`,
    ...options,
  });
  const events = recordEvents(client, EVENTS);
  const ws = () => WebSocket.instances.at(-1);
  return { clock, WebSocket, client, events, ws };
}

async function connected(options) {
  const env = setup(options);
  env.client.connect();
  await settle();
  env.ws().handshake();
  await settle();
  return env;
}

const pub = (topic, epoch, offset, data = offset, extra = {}) => ({ push: 'pub', topic, epoch, offset, data, ...extra });

test('connect sends the token first and reports the session', async () => {
  const { client, ws, events } = setup();
  const ready = client.connect();
  await settle();
  assert.equal(ws().url, 'ws://relay.test/ws');
  ws().open();
  assert.deepEqual(ws().sent, [{ ref: 1, op: 'connect', token: 'tok' }]);
  ws().acceptConnect({ client: 'c9', user: 'alice', region: 'eu-west' });
  await ready;
  assert.equal(client.state, 'connected');
  assert.deepEqual(events.of('connected'), [{ transport: 'websocket', client: 'c9', user: 'alice', region: 'eu-west' }]);
  assert.deepEqual(events.of('state').map((s) => s.state), ['connecting', 'connected']);
});

test('requests made before the connection are sent after the handshake', async () => {
  const { client, ws } = setup();
  const subscribed = client.subscribe('room:a');
  const stats = client.presenceStats('room:a');
  client.connect();
  await settle();
  ws().open();
  assert.equal(ws().sent.length, 1, 'nothing but connect goes out before the reply');
  ws().acceptConnect();
  assert.deepEqual(ws().sent.slice(1).map((f) => f.op), ['subscribe', 'presence_stats']);
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'e1', offset: 0 });
  ws().reply('presence_stats', 'room:a', { topic: 'room:a', clients: 3, users: 2 });
  assert.deepEqual(await subscribed, { topic: 'room:a', epoch: 'e1', offset: 0 });
  assert.deepEqual(await stats, { topic: 'room:a', clients: 3, users: 2 });
});

test('error replies reject with the relay code, name and message', async () => {
  const { client, ws } = await connected();
  const p = client.publish('room:a', { x: 1 });
  const frame = ws().sentOps('publish')[0];
  ws().receive({ ref: frame.ref, error: { code: 103, name: 'permission_denied', message: "the token does not grant publish on 'room:a'" } });
  await assert.rejects(p, (e) => e instanceof TernError && e.code === 103 && e.codeName === 'permission_denied' && /room:a/.test(e.message));
  const sub = client.subscribe('nope:x');
  ws().receive({ ref: ws().sentOps('subscribe')[0].ref, error: { code: 102, name: 'unknown_namespace', message: 'namespace nope' } });
  await assert.rejects(sub, (e) => e.code === 102 && e.topic === 'nope:x');
  assert.deepEqual(client.topics, [], 'a refused subscription is forgotten');
});

test('presence and presence_stats send their fields and resolve with the reply', async () => {
  const { client, ws } = await connected();
  const list = client.presence('room:a', { limit: 5 });
  const frame = ws().sentOps('presence')[0];
  assert.deepEqual({ ...frame, ref: 0 }, { ref: 0, op: 'presence', topic: 'room:a', limit: 5 });
  const reply = { topic: 'room:a', total: 1, truncated: false, entries: [{ client: 'c1', user: 'alice', region: 'eu-west' }] };
  ws().receive({ ref: frame.ref, ok: reply });
  assert.deepEqual(await list, reply);
});

test('reconnects after a loss with a full-jitter backoff delay', async () => {
  const { client, ws, WebSocket, clock, events } = await connected({ backoff: { initialMs: 1000, maxMs: 30_000 } });
  ws().serverClose(1006);
  const [lost] = events.of('disconnected');
  assert.equal(lost.willReconnect, true);
  assert.equal(lost.code, 1006);
  assert.equal(lost.delayMs, 500, 'attempt 0 after a good session: random 0.5 of [0, 1000]');
  assert.equal(client.state, 'reconnecting');
  await clock.advance(499);
  assert.equal(WebSocket.instances.length, 1);
  await clock.advance(1);
  assert.equal(WebSocket.instances.length, 2);
  assert.equal(client.state, 'connecting');

  ws().fail();
  await clock.advance(events.of('disconnected').at(-1).delayMs);
  ws().fail();
  await clock.advance(events.of('disconnected').at(-1).delayMs);
  ws().fail();
  const delays = events.of('disconnected').map((d) => d.delayMs);
  assert.deepEqual(delays, [500, 1000, 2000, 4000], 'the bound doubles with each failed attempt');
  await clock.advance(4000);
  ws().handshake();
  await settle();
  ws().serverClose(1006);
  assert.equal(events.of('disconnected').at(-1).delayMs, 500, 'a completed handshake resets the backoff');
});

test("the relay's reconnect_after_ms advice replaces the backoff for the next attempt", async () => {
  const { ws, WebSocket, clock, events } = await connected({ backoff: { initialMs: 100, maxMs: 1000 } });
  ws().receive({ push: 'disconnect', code: 4004, reason: 'relay shutting down', reconnect: true, reconnect_after_ms: 7250 });
  ws().serverClose(4004, 'relay shutting down');
  assert.equal(events.of('disconnected')[0].delayMs, 7250);
  assert.equal(events.of('disconnected')[0].code, 4004);
  await clock.advance(7249);
  assert.equal(WebSocket.instances.length, 1, 'no reconnect before the advised delay');
  await clock.advance(1);
  assert.equal(WebSocket.instances.length, 2);
  ws().handshake();
  await settle();
  ws().serverClose(1006);
  assert.equal(events.of('disconnected')[1].delayMs, 50, 'the advice applies once; backoff resumes');
});

test('resubscribes after a reconnect with since = the last delivered position', async () => {
  const { client, ws, clock, events } = await connected();
  const sub = client.subscribe('room:a');
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'eu-west.1', offset: 3 });
  await sub;
  assert.equal(ws().sentOps('subscribe')[0].since, undefined, 'a first subscribe has no since');
  ws().receive(pub('room:a', 'eu-west.1', 4));
  ws().receive(pub('room:a', 'eu-west.1', 5));
  assert.deepEqual(client.position('room:a'), { epoch: 'eu-west.1', offset: 5 });
  ws().serverClose(1006);
  await clock.advance(events.of('disconnected')[0].delayMs);
  ws().handshake();
  const again = ws().sentOps('subscribe');
  assert.equal(again.length, 1);
  assert.deepEqual(again[0].since, { epoch: 'eu-west.1', offset: 5 });
  assert.equal(again[0].topic, 'room:a');
});

test('a subscribe with since starts from the position the app kept', async () => {
  const { client, ws } = await connected();
  client.subscribe('room:a', { since: { epoch: 'e1', offset: 41 } });
  assert.deepEqual(ws().sentOps('subscribe')[0].since, { epoch: 'e1', offset: 41 });
});

test('recovered and live publications overlapping across a reconnect are delivered once, in order', async () => {
  const { client, ws, clock, events } = await connected();
  client.subscribe('room:a');
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'e1', offset: 3 });
  ws().receive(pub('room:a', 'e1', 4));
  ws().receive(pub('room:a', 'e1', 5));
  ws().receive(pub('room:a', 'e1', 5));
  ws().serverClose(4003, 'slow consumer');
  await clock.advance(events.of('disconnected')[0].delayMs);
  ws().handshake();
  ws().reply('subscribe', 'room:a', {
    topic: 'room:a', epoch: 'e1', offset: 7, recovered: true,
    publications: [4, 5, 6, 7].map((o) => ({ topic: 'room:a', epoch: 'e1', offset: o, data: o })),
  });
  ws().receive(pub('room:a', 'e1', 6));
  ws().receive(pub('room:a', 'e1', 7));
  ws().receive(pub('room:a', 'e1', 8));
  const offsets = events.of('publication').map((p) => p.offset);
  assert.deepEqual(offsets, [4, 5, 6, 7, 8]);
  assert.deepEqual(events.of('publication').map((p) => p.data), [4, 5, 6, 7, 8]);
  assert.deepEqual(events.of('resync'), []);
  assert.deepEqual(client.position('room:a'), { epoch: 'e1', offset: 8 });
});

test('publications carry topic, position, id, user and data', async () => {
  const { client, ws, events } = await connected();
  client.subscribe('room:a');
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'e1', offset: 0 });
  ws().receive(pub('room:a', 'e1', 1, { text: 'hi' }, { id: 'm-1', user: 'bob' }));
  ws().receive(pub('room:other', 'e1', 1, 'not subscribed'));
  assert.deepEqual(events.of('publication'), [{
    topic: 'room:a', epoch: 'e1', offset: 1, position: { epoch: 'e1', offset: 1 }, id: 'm-1', user: 'bob', data: { text: 'hi' },
  }]);
});

test('trace: true is sent with the subscribe and again after a reconnect, and hops reach the publication event', async () => {
  const { client, ws, clock, events } = await connected();
  client.subscribe('room:a', { trace: true });
  client.subscribe('room:b');
  assert.equal(ws().sentOps('subscribe')[0].trace, true);
  assert.equal(ws().sentOps('subscribe')[1].trace, undefined, 'an untraced subscribe does not ask');
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'e1', offset: 0 });
  const hops = [
    { region: 'us', step: 'received', at: 1763900000100.5 },
    { region: 'eu', step: 'sequenced', at: 1763900000140.25 },
    { region: 'us', step: 'delivered', at: 1763900000180 },
  ];
  ws().receive(pub('room:a', 'e1', 1, 'x', { trace: hops }));
  assert.deepEqual(events.of('publication')[0].trace, hops);
  ws().serverClose(1006);
  await clock.advance(events.of('disconnected')[0].delayMs);
  ws().handshake();
  const again = ws().sentOps('subscribe');
  assert.equal(again.find((f) => f.topic === 'room:a').trace, true);
  assert.equal(again.find((f) => f.topic === 'room:b').trace, undefined);
});

test('a publish unanswered at disconnect is re-sent with the same id after reconnect', async () => {
  const { client, ws, clock, events } = await connected();
  const generated = client.publish('room:a', { n: 1 });
  const chosen = client.publish('room:a', { n: 2 }, { id: 'mine-7' });
  const volatile = client.publish('room:a', { typing: true }, { volatile: true });
  const first = ws().sentOps('publish');
  assert.deepEqual(first.map((f) => f.id), ['uuid-1', 'mine-7', undefined]);
  assert.equal(first[2].volatile, true);
  ws().serverClose(1006);
  await assert.rejects(volatile, (e) => e.codeName === 'connection_lost');
  await clock.advance(events.of('disconnected')[0].delayMs);
  ws().handshake();
  const resent = ws().sentOps('publish');
  assert.deepEqual(resent.map((f) => [f.id, f.data]), [['uuid-1', { n: 1 }], ['mine-7', { n: 2 }]]);
  assert.ok(resent.every((f) => !first.some((g) => g.ref === f.ref)), 'new refs on the new connection');
  ws().receive({ ref: resent[0].ref, ok: { topic: 'room:a', epoch: 'e1', offset: 10, duplicate: true } });
  ws().receive({ ref: resent[1].ref, ok: { topic: 'room:a', epoch: 'e1', offset: 11, duplicate: false } });
  assert.deepEqual(await generated, { topic: 'room:a', epoch: 'e1', offset: 10, duplicate: true, id: 'uuid-1' });
  assert.deepEqual(await chosen, { topic: 'room:a', epoch: 'e1', offset: 11, duplicate: false, id: 'mine-7' });
});

test('a volatile publish while disconnected is refused, not queued', async () => {
  const { client } = setup();
  await assert.rejects(client.publish('room:a', 1, { volatile: true }), (e) => e.codeName === 'not_connected');
});

test('recovered:false raises resync and continues from the reply position', async () => {
  const { client, ws, clock, events } = await connected();
  client.subscribe('room:a');
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'e1', offset: 2 });
  ws().receive(pub('room:a', 'e1', 3));
  ws().serverClose(1006);
  await clock.advance(events.of('disconnected')[0].delayMs);
  ws().handshake();
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'e2', offset: 9, recovered: false, reason: 'epoch_changed', publications: [] });
  assert.deepEqual(events.of('resync'), [{ topic: 'room:a', reason: 'epoch_changed', position: { epoch: 'e2', offset: 9 } }]);
  assert.deepEqual(client.position('room:a'), { epoch: 'e2', offset: 9 });
  ws().receive(pub('room:a', 'e2', 9));
  ws().receive(pub('room:a', 'e2', 10));
  assert.deepEqual(events.of('publication').map((p) => [p.epoch, p.offset]), [['e1', 3], ['e2', 10]]);
});

test('a gap push raises resync and moves the position', async () => {
  const { client, ws, events } = await connected();
  client.subscribe('room:a');
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'e1', offset: 2 });
  ws().receive({ push: 'gap', topic: 'room:a', epoch: 'e1', offset: 40, reason: 'evicted' });
  assert.deepEqual(events.of('resync'), [{ topic: 'room:a', reason: 'evicted', position: { epoch: 'e1', offset: 40 } }]);
  ws().receive(pub('room:a', 'e1', 40));
  ws().receive(pub('room:a', 'e1', 41));
  assert.deepEqual(events.of('publication').map((p) => p.offset), [41]);
  assert.deepEqual(client.position('room:a'), { epoch: 'e1', offset: 41 });
});

test('an epoch push moves the position; offsets may jump in the new epoch without a resync', async () => {
  const { client, ws, clock, events } = await connected();
  client.subscribe('room:a');
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'H.1', offset: 5 });
  ws().receive(pub('room:a', 'H.1', 6, 'a', { id: 'p-a' }));
  ws().receive({ push: 'epoch', topic: 'room:a', epoch: 'H2.1', offset: 0 });
  assert.deepEqual(client.position('room:a'), { epoch: 'H2.1', offset: 0 }, 'recovery continues from the epoch push');
  ws().receive(pub('room:a', 'H2.1', 1, 'b', { id: 'p-b' }));
  ws().receive({ push: 'epoch', topic: 'room:a', epoch: 'H.1', offset: 6 });
  ws().receive(pub('room:a', 'H.1', 6, 'a', { id: 'p-a' }));
  ws().receive(pub('room:a', 'H.1', 9, 'c', { id: 'p-c' }));
  assert.deepEqual(events.of('epoch'), [
    { topic: 'room:a', position: { epoch: 'H2.1', offset: 0 }, previous: { epoch: 'H.1', offset: 6 } },
    { topic: 'room:a', position: { epoch: 'H.1', offset: 6 }, previous: { epoch: 'H2.1', offset: 1 } },
  ]);
  assert.deepEqual(events.of('resync'), []);
  assert.deepEqual(events.of('publication').map((p) => p.data), ['a', 'b', 'c']);

  ws().serverClose(1006);
  await clock.advance(events.of('disconnected')[0].delayMs);
  ws().handshake();
  assert.deepEqual(ws().sentOps('subscribe')[0].since, { epoch: 'H.1', offset: 9 });
  ws().reply('subscribe', 'room:a', {
    topic: 'room:a', epoch: 'H.1', offset: 11, recovered: true,
    publications: [
      { topic: 'room:a', epoch: 'H.1', offset: 10, id: 'p-b', data: 'b' },
      { topic: 'room:a', epoch: 'H.1', offset: 11, id: 'p-d', data: 'd' },
    ],
  });
  assert.deepEqual(events.of('publication').map((p) => p.data), ['a', 'b', 'c', 'd'],
    'a publication re-sequenced into the canonical epoch is not delivered again');
  assert.deepEqual(client.position('room:a'), { epoch: 'H.1', offset: 11 });
});

test('join, leave and volatile pushes are surfaced', async () => {
  const { ws, events } = await connected();
  ws().receive({ push: 'join', topic: 'room:a', client: 'c2', user: 'bob', region: 'us-east' });
  ws().receive({ push: 'leave', topic: 'room:a', client: 'c2', user: 'bob', region: 'us-east' });
  ws().receive({ push: 'volatile', topic: 'room:a', user: 'bob', data: { typing: true } });
  assert.deepEqual(events.of('join'), [{ topic: 'room:a', client: 'c2', user: 'bob', region: 'us-east' }]);
  assert.deepEqual(events.of('leave'), [{ topic: 'room:a', client: 'c2', user: 'bob', region: 'us-east' }]);
  assert.deepEqual(events.of('volatile'), [{ topic: 'room:a', user: 'bob', data: { typing: true } }]);
});

test('unsubscribe forgets the topic so it is not resubscribed', async () => {
  const { client, ws, clock, events } = await connected();
  client.subscribe('room:a');
  client.subscribe('room:b');
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'e', offset: 1 });
  ws().reply('subscribe', 'room:b', { topic: 'room:b', epoch: 'e', offset: 1 });
  const gone = client.unsubscribe('room:a');
  ws().reply('unsubscribe', 'room:a', { topic: 'room:a' });
  assert.deepEqual(await gone, { topic: 'room:a' });
  ws().receive(pub('room:a', 'e', 2));
  assert.deepEqual(events.of('publication'), []);
  ws().serverClose(1006);
  await clock.advance(events.of('disconnected')[0].delayMs);
  ws().handshake();
  assert.deepEqual(ws().sentOps('subscribe').map((f) => f.topic), ['room:b']);
  await assert.rejects(client.unsubscribe('room:a'), (e) => e.code === 109);
});

test('the token function is called before every connect', async () => {
  let calls = 0;
  const token = async () => `tok-${++calls}`;
  const { client, ws, clock, events } = setup({ token });
  client.connect();
  await settle();
  ws().handshake();
  await settle();
  ws().serverClose(1006);
  await clock.advance(events.of('disconnected')[0].delayMs);
  ws().handshake();
  assert.equal(calls, 2);
  assert.equal(ws().sentOps('connect')[0].token, 'tok-2');
});

test('close 4002 reconnects with a fresh token from the token function', async () => {
  let n = 0;
  const { ws, clock, events, WebSocket, client } = setup({ token: () => `t${++n}` });
  client.connect();
  await settle();
  ws().handshake();
  ws().receive({ error: { code: 111, name: 'token_expired', message: 'the token has expired; reconnect with a fresh one' } });
  ws().serverClose(4002, 'token expired');
  const [lost] = events.of('disconnected');
  assert.equal(lost.willReconnect, true);
  await clock.advance(lost.delayMs);
  assert.equal(WebSocket.instances.length, 2);
  ws().open();
  assert.equal(ws().sentOps('connect')[0].token, 't2');
});

test('close 4002 with a fixed token string stops: no fresh token can be had', async () => {
  const { ws, clock, events, WebSocket, client } = await connected();
  ws().serverClose(4002, 'token expired');
  assert.equal(client.state, 'closed');
  assert.equal(events.of('error').at(-1).code, 4002);
  await clock.advance(60_000);
  assert.equal(WebSocket.instances.length, 1);
});

test('close 4001 stops reconnecting, emits an error and fails what waits', async () => {
  const { client, ws, WebSocket, clock, events } = setup({ token: () => 'bad' });
  const ready = client.connect();
  const waiting = client.publish('room:a', 1);
  await settle();
  ws().open();
  const connect = ws().sentOps('connect')[0];
  ws().receive({ ref: connect.ref, error: { code: 101, name: 'unauthorized', message: 'the token was refused: bad signature' } });
  ws().serverClose(4001, 'unauthorized');
  await assert.rejects(ready, (e) => e.code === 4001);
  await assert.rejects(waiting, (e) => e.code === 4001);
  const [error] = events.of('error');
  assert.equal(error.code, 4001);
  assert.equal(error.codeName, 'unauthorized');
  assert.match(error.message, /bad signature/);
  assert.equal(events.of('disconnected').at(-1).willReconnect, false);
  assert.equal(client.state, 'closed');
  await clock.advance(120_000);
  assert.equal(WebSocket.instances.length, 1);
  assert.deepEqual(clock.pending, []);
});

test('a disconnect push with reconnect:false stops reconnecting', async () => {
  const { client, ws, WebSocket, clock } = await connected();
  ws().receive({ push: 'disconnect', code: 4001, reason: 'unauthorized', reconnect: false });
  ws().serverClose(1000);
  assert.equal(client.state, 'closed');
  await clock.advance(60_000);
  assert.equal(WebSocket.instances.length, 1);
});

test('a connection that never answers connect is dropped after connectTimeoutMs', async () => {
  const { client, ws, WebSocket, clock, events } = setup({ connectTimeoutMs: 3000 });
  client.connect();
  await settle();
  ws().open();
  await clock.advance(2999);
  assert.equal(events.of('disconnected').length, 0);
  await clock.advance(1);
  assert.equal(events.of('disconnected')[0].reason, 'connect timeout');
  assert.ok(WebSocket.instances[0].closedByClient);
  await clock.advance(events.of('disconnected')[0].delayMs);
  assert.equal(WebSocket.instances.length, 2);
});

test('close() stops for good and a later connect() resumes the subscriptions', async () => {
  const { client, ws, WebSocket, clock, events } = await connected();
  client.subscribe('room:a');
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'e', offset: 4 });
  const pending = client.presenceStats('room:a');
  client.close();
  await assert.rejects(pending, (e) => e.codeName === 'closed');
  assert.equal(client.state, 'closed');
  assert.equal(events.of('disconnected').at(-1).willReconnect, false);
  await clock.advance(60_000);
  assert.equal(WebSocket.instances.length, 1);
  client.connect();
  await settle();
  ws().handshake();
  assert.deepEqual(ws().sentOps('subscribe')[0].since, { epoch: 'e', offset: 4 });
});

test('on() passes the event detail and returns a remover', async () => {
  const { client, ws } = await connected();
  const seen = [];
  const off = client.on('join', (d) => seen.push(d.user));
  ws().receive({ push: 'join', topic: 'room:a', client: 'c2', user: 'bob', region: 'r' });
  off();
  ws().receive({ push: 'join', topic: 'room:a', client: 'c3', user: 'eve', region: 'r' });
  assert.deepEqual(seen, ['bob']);
});

test('auto mode stays on WebSocket when it works', async () => {
  const EventSource = fakeEventSourceClass();
  const { client, ws } = setup({ transport: 'auto', EventSource });
  client.connect();
  await settle();
  ws().handshake();
  assert.equal(client.transport, 'websocket');
  assert.equal(EventSource.instances.length, 0);
});

test('a resubscribe refused after a reconnect drops the topic and reports it', async () => {
  const { client, ws, clock, events } = await connected();
  client.subscribe('room:a');
  client.subscribe('room:b');
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'e', offset: 1 });
  ws().reply('subscribe', 'room:b', { topic: 'room:b', epoch: 'e', offset: 1 });
  ws().serverClose(1006);
  await clock.advance(events.of('disconnected')[0].delayMs);
  ws().handshake();
  const frame = ws().sentOps('subscribe').find((f) => f.topic === 'room:b');
  ws().receive({ ref: frame.ref, error: { code: 103, name: 'permission_denied', message: "no subscribe on 'room:b'" } });
  const [error] = events.of('error');
  assert.equal(error.code, 103);
  assert.equal(error.topic, 'room:b');
  assert.deepEqual(client.topics, ['room:a']);
});

test('a resubscribe failing with internal_error is retried on the same connection', async () => {
  const { client, ws, clock, events, WebSocket } = await connected();
  client.subscribe('room:a');
  ws().reply('subscribe', 'room:a', { topic: 'room:a', epoch: 'e', offset: 3 });
  ws().serverClose(1006);
  await clock.advance(events.of('disconnected')[0].delayMs);
  ws().handshake();
  const first = ws().sentOps('subscribe')[0];
  ws().receive({ ref: first.ref, error: { code: 100, name: 'internal_error', message: 'home cannot be reached; retry' } });
  assert.equal(events.of('error')[0].code, 100);
  assert.deepEqual(client.topics, ['room:a']);
  await clock.advance(1000);
  const again = ws().sentOps('subscribe');
  assert.equal(again.length, 2);
  assert.deepEqual(again[1].since, { epoch: 'e', offset: 3 });
  assert.equal(WebSocket.instances.length, 2);
});
