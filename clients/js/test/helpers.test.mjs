import test from 'node:test';
import assert from 'node:assert/strict';
import { backoffDelay, encodeCursor, decodeCursor, httpUrlFor, TernError } from '../tern.js';

test('backoff delays stay within [0, min(max, initial * 2^attempt)]', () => {
  let seed = 42;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const options = { initialMs: 100, maxMs: 5_000 };
  for (let attempt = 0; attempt < 20; attempt++) {
    const cap = Math.min(5_000, 100 * 2 ** attempt);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt, options, random);
      assert.ok(Number.isInteger(d), `delay ${d} is an integer`);
      assert.ok(d >= 0 && d <= cap, `attempt ${attempt}: ${d} within [0, ${cap}]`);
    }
  }
});

test('backoff upper bound doubles per attempt until the maximum', () => {
  const top = () => 0.999999999;
  const caps = [0, 1, 2, 3, 4, 5, 6, 7].map((a) => backoffDelay(a, { initialMs: 100, maxMs: 5_000 }, top));
  assert.deepEqual(caps, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
  assert.equal(backoffDelay(3, { initialMs: 100, maxMs: 5_000 }, () => 0), 0);
  assert.equal(backoffDelay(1000, { initialMs: 100, maxMs: 5_000 }, top), 5_000);
});

test('backoff delays are spread over the whole range (full jitter)', () => {
  let i = 0;
  const values = [0.1, 0.5, 0.9];
  const random = () => values[i++ % values.length];
  const seen = values.map(() => backoffDelay(4, { initialMs: 100, maxMs: 10_000 }, random));
  assert.deepEqual(seen, [160, 800, 1440]);
});

test('cursor encoding matches the relay: topic|epoch|offset, topics sorted', () => {
  const cursor = encodeCursor(new Map([
    ['room:b', { epoch: 'eu-west.2', offset: 3 }],
    ['news:world', { epoch: 'eu-west.1', offset: 7 }],
    ['room:none', null],
  ]));
  assert.equal(cursor, 'news:world|eu-west.1|7,room:b|eu-west.2|3');
  assert.deepEqual([...decodeCursor(cursor)], [
    ['news:world', { epoch: 'eu-west.1', offset: 7 }],
    ['room:b', { epoch: 'eu-west.2', offset: 3 }],
  ]);
  assert.equal(decodeCursor('news:world|e'), null);
  assert.equal(decodeCursor('a|e|x'), null);
  assert.equal(decodeCursor('').size, 0);
});

test('the HTTP base URL is derived from the WebSocket URL', () => {
  assert.equal(httpUrlFor('ws://127.0.0.1:7101/ws'), 'http://127.0.0.1:7101');
  assert.equal(httpUrlFor('wss://relay.example/tern/ws'), 'https://relay.example/tern');
  assert.equal(httpUrlFor('wss://relay.example/ws?x=1'), 'https://relay.example');
});

test('relay errors keep their code, name and message', () => {
  const e = TernError.fromRelay({ code: 103, name: 'permission_denied', message: 'no' }, { status: 403 });
  assert.ok(e instanceof Error);
  assert.equal(e.code, 103);
  assert.equal(e.codeName, 'permission_denied');
  assert.equal(e.message, 'no');
  assert.equal(e.status, 403);
});
