import test from 'node:test';
import assert from 'node:assert/strict';
import { TernClient } from '../tern.js';
import { FakeClock, fakeWebSocketClass, fakeEventSourceClass, fakeFetch, recordEvents, settle } from '../testing/fakes.mjs';

const EVENTS = ['connected', 'disconnected', 'subscribed', 'publication', 'resync', 'epoch', 'error', 'state', 'join', 'volatile'];

function setup(options = {}) {
  const clock = new FakeClock();
  const WebSocket = fakeWebSocketClass();
  const EventSource = fakeEventSourceClass();
  let uuid = 0;
  const client = new TernClient('wss://relay.test/ws', {
    transport: 'auto',
    token: 'tok',
    WebSocket,
    EventSource,
    fetch: fakeFetch([]),
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    now: () => clock.now,
    randomUUID: () => `uuid-${++uuid}`,
    ...options,
  });
  const events = recordEvents(client, EVENTS);
  const es = () => EventSource.instances.at(-1);
  return { clock, WebSocket, EventSource, client, events, es };
}

async function onSse(options) {
  const env = setup({ transport: 'sse', ...options });
  env.client.connect();
  await settle();
  return env;
}

const pubEvent = (topic, epoch, offset, data = offset) => ({ push: 'pub', topic, epoch, offset, data });

test('auto mode falls back to SSE after the WebSocket fails twice before opening', async () => {
  const { client, WebSocket, EventSource, clock, events, es } = setup();
  const sub = client.subscribe('news:world');
  client.connect();
  await settle();
  WebSocket.instances[0].fail();
  assert.equal(client.transport, 'websocket', 'one failure is not enough');
  await clock.advance(events.of('disconnected')[0].delayMs);
  assert.equal(WebSocket.instances.length, 2);
  WebSocket.instances[1].fail();
  await settle();
  assert.equal(client.transport, 'sse');
  assert.equal(EventSource.instances.length, 1);
  assert.equal(es().url, 'https://relay.test/sse?topic=news%3Aworld&token=tok');
  es().open();
  assert.equal(client.state, 'connected');
  assert.deepEqual(events.of('connected').at(-1), { transport: 'sse', client: null, user: null, region: null });

  es().emit('subscribed', { ok: { topic: 'news:world', epoch: 'eu-west.1', offset: 6 } }, 'news:world|eu-west.1|6');
  assert.deepEqual(await sub, { topic: 'news:world', epoch: 'eu-west.1', offset: 6 });
  es().emit('pub', pubEvent('news:world', 'eu-west.1', 7, { headline: 'a' }), 'news:world|eu-west.1|7');
  es().emit('pub', pubEvent('news:world', 'eu-west.1', 7, { headline: 'a' }), 'news:world|eu-west.1|7');
  es().emit('pub', pubEvent('news:world', 'eu-west.1', 8, { headline: 'b' }), 'news:world|eu-west.1|8');
  assert.deepEqual(events.of('publication').map((p) => [p.offset, p.data.headline]), [[7, 'a'], [8, 'b']]);
  assert.equal(WebSocket.instances.length, 2, 'no more WebSocket attempts once on SSE');
});

test('auto mode falls back to SSE at once when the WebSocket constructor throws', async () => {
  const WebSocket = fakeWebSocketClass({ throwOnCreate: true });
  const { client, EventSource } = setup({ WebSocket });
  client.subscribe('news:world');
  client.connect();
  await settle();
  assert.equal(client.transport, 'sse');
  assert.equal(EventSource.instances.length, 1);
});

test('websocket mode never falls back', async () => {
  const { client, WebSocket, EventSource, clock, events } = setup({ transport: 'websocket' });
  client.connect();
  await settle();
  for (let i = 0; i < 4; i++) {
    WebSocket.instances.at(-1).fail();
    await clock.advance(events.of('disconnected').at(-1).delayMs);
  }
  assert.equal(client.transport, 'websocket');
  assert.equal(EventSource.instances.length, 0);
  assert.equal(WebSocket.instances.length, 5);
});

test('SSE recovery: subscribed replays, gaps and epochs are surfaced like on WebSocket', async () => {
  const { client, es, events } = await onSse();
  client.subscribe('room:a', { since: { epoch: 'e1', offset: 2 } });
  await settle();
  assert.equal(es().params.get('since'), 'room:a|e1|2');
  es().open();
  es().emit('pub', pubEvent('room:a', 'e1', 3));
  es().emit('pub', pubEvent('room:a', 'e1', 4));
  es().emit('subscribed', { ok: { topic: 'room:a', epoch: 'e1', offset: 4, recovered: true, publications: [] } });
  es().emit('gap', { push: 'gap', topic: 'room:a', epoch: 'e1', offset: 20, reason: 'evicted' });
  es().emit('pub', pubEvent('room:a', 'e1', 21));
  es().emit('epoch', { push: 'epoch', topic: 'room:a', epoch: 'e2', offset: 0 });
  es().emit('pub', pubEvent('room:a', 'e2', 1));
  assert.deepEqual(events.of('publication').map((p) => `${p.epoch}/${p.offset}`), ['e1/3', 'e1/4', 'e1/21', 'e2/1']);
  assert.deepEqual(events.of('resync'), [{ topic: 'room:a', reason: 'evicted', position: { epoch: 'e1', offset: 20 } }]);
  assert.deepEqual(events.of('epoch')[0].position, { epoch: 'e2', offset: 0 });
  assert.deepEqual(client.position('room:a'), { epoch: 'e2', offset: 1 });
});

test('SSE subscribed with recovered:false raises resync', async () => {
  const { client, es, events } = await onSse();
  client.subscribe('room:a', { since: { epoch: 'old', offset: 9 } });
  await settle();
  es().open();
  es().emit('subscribed', { ok: { topic: 'room:a', epoch: 'new', offset: 3, recovered: false, reason: 'epoch_changed', publications: [] } });
  assert.deepEqual(events.of('resync'), [{ topic: 'room:a', reason: 'epoch_changed', position: { epoch: 'new', offset: 3 } }]);
  assert.deepEqual(client.position('room:a'), { epoch: 'new', offset: 3 });
});

test('changing topics re-creates the EventSource with every topic and the cursor in since', async () => {
  const { client, es, EventSource } = await onSse();
  client.subscribe('room:b');
  client.subscribe('news:world');
  await settle();
  assert.equal(EventSource.instances.length, 1, 'subscriptions in one tick share one stream');
  es().open();
  es().emit('subscribed', { ok: { topic: 'room:b', epoch: 'e', offset: 1 } });
  es().emit('subscribed', { ok: { topic: 'news:world', epoch: 'n', offset: 5 } });
  es().emit('pub', pubEvent('news:world', 'n', 6));
  client.subscribe('room:c');
  await settle();
  assert.equal(EventSource.instances.length, 2);
  assert.ok(EventSource.instances[0].closed);
  assert.deepEqual(es().params.getAll('topic'), ['room:b', 'news:world', 'room:c']);
  assert.equal(es().params.get('since'), 'news:world|n|6,room:b|e|1');
  client.unsubscribe('room:b');
  await settle();
  assert.deepEqual(es().params.getAll('topic'), ['news:world', 'room:c']);
  assert.equal(es().params.get('since'), 'news:world|n|6');
});

test('a closed EventSource is re-created after backoff with a fresh token and the cursor', async () => {
  let n = 0;
  const { client, es, EventSource, clock, events } = await onSse({ token: async () => `jwt-${++n}` });
  client.subscribe('room:a');
  await settle();
  assert.equal(es().params.get('token'), 'jwt-1');
  es().open();
  es().emit('subscribed', { ok: { topic: 'room:a', epoch: 'e', offset: 1 } });
  es().emit('pub', pubEvent('room:a', 'e', 2));
  es().fail({ closed: true });
  const lost = events.of('disconnected').at(-1);
  assert.equal(lost.willReconnect, true);
  assert.equal(client.state, 'reconnecting');
  await clock.advance(lost.delayMs);
  assert.equal(EventSource.instances.length, 2);
  assert.equal(es().params.get('token'), 'jwt-2');
  assert.equal(es().params.get('since'), 'room:a|e|2');
});

test('an EventSource reconnecting by itself is left alone and reported once', async () => {
  const { client, es, EventSource, events } = await onSse();
  client.subscribe('room:a');
  await settle();
  es().open();
  es().fail();
  es().fail();
  assert.equal(EventSource.instances.length, 1);
  assert.equal(events.of('disconnected').length, 1);
  assert.equal(client.state, 'connecting');
  es().open();
  assert.equal(client.state, 'connected');
  assert.equal(events.of('connected').length, 2);
});

test('an SSE disconnect event waits reconnect_after_ms, then re-creates the stream', async () => {
  const { client, es, EventSource, clock, events } = await onSse();
  client.subscribe('room:a');
  await settle();
  es().open();
  es().emit('disconnect', { push: 'disconnect', code: 4004, reason: 'relay shutting down', reconnect: true, reconnect_after_ms: 3300 });
  assert.ok(EventSource.instances[0].closed);
  assert.equal(events.of('disconnected').at(-1).delayMs, 3300);
  await clock.advance(3299);
  assert.equal(EventSource.instances.length, 1);
  await clock.advance(1);
  assert.equal(EventSource.instances.length, 2);
});

test('an SSE token_expired error re-creates the stream with a fresh token', async () => {
  let n = 0;
  const { client, es, EventSource, clock, events } = await onSse({ token: () => `jwt-${++n}` });
  client.subscribe('room:a');
  await settle();
  es().open();
  es().emit('error', { error: { code: 111, name: 'token_expired', message: 'the token has expired; reconnect with a fresh one' } });
  assert.ok(EventSource.instances[0].closed);
  await clock.advance(events.of('disconnected').at(-1).delayMs);
  assert.equal(es().params.get('token'), 'jwt-2');
});

test('an SSE error about one topic rejects that subscribe', async () => {
  const { client, es, events } = await onSse();
  const a = client.subscribe('room:a');
  const secret = client.subscribe('secret:x');
  await settle();
  es().open();
  es().emit('subscribed', { ok: { topic: 'room:a', epoch: 'e', offset: 0 } });
  es().emit('error', { error: { code: 103, name: 'permission_denied', message: "the token does not grant subscribe on 'secret:x'" } });
  await a;
  await assert.rejects(secret, (e) => e.code === 103 && e.topic === 'secret:x');
  assert.deepEqual(client.topics, ['room:a']);
  es().emit('error', { error: { code: 100, name: 'internal_error', message: 'something else' } });
  assert.equal(events.of('error').at(-1).code, 100);
});

test('SSE publish goes over HTTP with the bearer token and a stable id', async () => {
  const fetch = fakeFetch([
    { status: 503, body: { error: { code: 100, name: 'internal_error', message: 'home did not answer' } } },
    new TypeError('network down'),
    { status: 200, body: { topic: 'room:a', epoch: 'e', offset: 4, duplicate: false } },
  ]);
  const { client, clock } = await onSse({ fetch, token: () => 'jwt-abc' });
  const done = client.publish('room:a', { text: 'hi' });
  await clock.advance(60_000);
  assert.deepEqual(await done, { topic: 'room:a', epoch: 'e', offset: 4, duplicate: false, id: 'uuid-1' });
  assert.equal(fetch.calls.length, 3);
  for (const call of fetch.calls) {
    assert.equal(call.url, 'https://relay.test/api/publish');
    assert.equal(call.init.method, 'POST');
    assert.equal(call.init.headers.Authorization, 'Bearer jwt-abc');
    assert.equal(call.init.headers['Content-Type'], 'application/json');
    assert.deepEqual(call.body, { topic: 'room:a', id: 'uuid-1', data: { text: 'hi' } });
  }
});

test('SSE publish rejects with the relay error on a refusal', async () => {
  const fetch = fakeFetch([{ status: 403, body: { error: { code: 103, name: 'permission_denied', message: 'no publish' } } }]);
  const { client } = await onSse({ fetch });
  await assert.rejects(client.publish('room:a', 1, { id: 'x' }), (e) => e.code === 103 && e.status === 403);
  assert.equal(fetch.calls.length, 1);
});

test('SSE publish refreshes an expired token once', async () => {
  let n = 0;
  const fetch = fakeFetch([
    { status: 401, body: { error: { code: 111, name: 'token_expired', message: 'expired' } } },
    { status: 200, body: { topic: 'room:a', epoch: 'e', offset: 1, duplicate: false } },
  ]);
  const { client } = await onSse({ fetch, token: () => `jwt-${++n}` });
  await client.publish('room:a', 1, { id: 'p1' });
  assert.deepEqual(fetch.calls.map((c) => c.init.headers.Authorization), ['Bearer jwt-1', 'Bearer jwt-2']);
});

test('publishes queued for a WebSocket that never opened go over HTTP after the fallback', async () => {
  const fetch = fakeFetch([{ status: 200, body: { topic: 'room:a', epoch: 'e', offset: 1, duplicate: false } }]);
  const WebSocket = fakeWebSocketClass({ throwOnCreate: true });
  const { client } = setup({ fetch, WebSocket });
  const p = client.publish('room:a', 'x', { id: 'q1' });
  const presence = assert.rejects(client.presence('room:a'), (e) => e.codeName === 'not_available_over_sse');
  client.connect();
  await settle();
  assert.deepEqual(await p, { topic: 'room:a', epoch: 'e', offset: 1, duplicate: false, id: 'q1' });
  await presence;
});

test('presence, presence_stats and volatile publish are refused over SSE', async () => {
  const { client } = await onSse();
  await assert.rejects(client.presence('room:a'), (e) => e.codeName === 'not_available_over_sse' && /over SSE/.test(e.message));
  await assert.rejects(client.presenceStats('room:a'), (e) => e.codeName === 'not_available_over_sse');
  await assert.rejects(client.publish('room:a', 1, { volatile: true }), (e) => e.codeName === 'not_available_over_sse');
});

test('an explicit httpUrl is used for SSE and publish', async () => {
  const fetch = fakeFetch([{ status: 200, body: { topic: 't:a', epoch: 'e', offset: 1, duplicate: false } }]);
  const { client, es } = await onSse({ httpUrl: 'https://api.test/tern/', fetch, token: null });
  client.subscribe('t:a');
  await settle();
  assert.equal(es().url, 'https://api.test/tern/sse?topic=t%3Aa');
  await client.publish('t:a', 1);
  assert.equal(fetch.calls[0].url, 'https://api.test/tern/api/publish');
  assert.equal(fetch.calls[0].init.headers.Authorization, undefined);
});

test('an SSE unauthorized error stops the client', async () => {
  const { client, es, EventSource, clock, events } = await onSse();
  client.subscribe('room:a').catch(() => {});
  await settle();
  es().open();
  es().emit('error', { error: { code: 101, name: 'unauthorized', message: 'the token was refused: bad signature' } });
  assert.equal(client.state, 'closed');
  assert.equal(events.of('error').at(-1).code, 4001);
  await clock.advance(60_000);
  assert.equal(EventSource.instances.length, 1);
});

test('an SSE disconnect event with reconnect:false stops the client', async () => {
  const { client, es, EventSource, clock } = await onSse();
  client.subscribe('room:a').catch(() => {});
  await settle();
  es().open();
  es().emit('disconnect', { push: 'disconnect', code: 4001, reason: 'unauthorized', reconnect: false });
  assert.equal(client.state, 'closed');
  assert.ok(es().closed);
  await clock.advance(60_000);
  assert.equal(EventSource.instances.length, 1);
});

test('an SSE error naming its topic rejects that subscribe even when others are pending', async () => {
  const { client, es } = await onSse();
  const a = client.subscribe('room:a');
  const b = client.subscribe('room:b');
  await settle();
  es().open();
  es().emit('error', { topic: 'room:b', error: { code: 106, name: 'limit_exceeded', message: 'at most 128 subscriptions per connection' } });
  await assert.rejects(b, (e) => e.code === 106 && e.topic === 'room:b');
  assert.deepEqual(client.topics, ['room:a']);
  es().emit('subscribed', { ok: { topic: 'room:a', epoch: 'e', offset: 0 } });
  await a;
});

test('over SSE a traced subscription asks for trace=1 on the stream', async () => {
  const { client, es } = await onSse();
  client.subscribe('room:a');
  await settle();
  assert.ok(!es().url.includes('trace='), 'no traced subscription, no trace parameter');
  client.subscribe('room:b', { trace: true });
  await settle();
  assert.ok(es().url.endsWith('&trace=1'), es().url);
});
