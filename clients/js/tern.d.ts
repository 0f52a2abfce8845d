/// Tern browser client. See docs/PROTOCOL.md for the wire protocol.

/// Where a publication sits in its topic's stream. Offsets are only
/// comparable within one epoch.
export interface Position {
  epoch: string;
  offset: number;
}

/// Any JSON value.
export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };

/// A token, a function returning one (called before every connect), or null for anonymous.
export type TokenSource = string | null | (() => string | null | undefined | Promise<string | null | undefined>);

export type TransportMode = 'websocket' | 'sse' | 'auto';
export type Transport = 'websocket' | 'sse';
export type ClientState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

/// Bounds of the reconnect delay: uniformly random in [0, min(maxMs, initialMs * 2^attempt)].
export interface BackoffOptions {
  /// The first attempt's upper bound (default 100).
  initialMs?: number;
  /// The largest upper bound (default 10000).
  maxMs?: number;
}

/// The parts of a WebSocket the client uses.
export interface WebSocketLike {
  readonly readyState: number;
  /// Set by the client; called with the browser's Event, MessageEvent (`data`) and CloseEvent (`code`, `reason`).
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/// The parts of an EventSource the client uses.
export interface EventSourceLike {
  readonly readyState: number;
  /// Called for `open`, `error` and the relay's named events (`pub`, `subscribed`, ...), whose `data` is JSON text.
  addEventListener(type: string, listener: (event: any) => void): void;
  close(): void;
}

export interface TernClientOptions {
  /// The token for `connect` (and for SSE and HTTP publish). A function is called before every (re)connect.
  token?: TokenSource;
  /// `auto` (default) uses WebSocket and falls back to SSE when it never opens.
  transport?: TransportMode;
  /// The relay's HTTP base URL for SSE and publish; derived from the WebSocket URL by default (`wss://h/ws` gives `https://h`).
  httpUrl?: string;
  /// Reconnect backoff bounds.
  backoff?: BackoffOptions;
  /// In auto mode, fall back to SSE after this many WebSocket failures before opening, with no successful connect yet (default 2).
  fallbackAfter?: number;
  /// Drop a WebSocket whose `connect` is not answered within this time (default 15000; 0 disables).
  connectTimeoutMs?: number;
  /// Extra attempts for an HTTP publish after a network error or 503, with the same id (default 4).
  httpRetries?: number;
  /// How long an idempotency id is remembered to drop a publication re-sequenced into another epoch (default 120000, the relay's idempotency_window).
  dedupWindowMs?: number;
  /// How many ids are remembered per topic for that (default 1000).
  dedupCapacity?: number;
  /// Injectable for tests and other runtimes.
  WebSocket?: new (url: string) => WebSocketLike;
  EventSource?: new (url: string) => EventSourceLike;
  fetch?: (url: string, init: { method: string; headers: Record<string, string>; body: string }) => Promise<{
    ok: boolean;
    status: number;
    json(): Promise<any>;
  }>;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: any) => void;
  /// A number in [0, 1), for backoff jitter.
  random?: () => number;
  /// Milliseconds now, for the id memory.
  now?: () => number;
  /// Generates publish ids (default `crypto.randomUUID`).
  randomUUID?: () => string;
}

/// An error reply from the relay, or a request the client could not complete.
export class TernError extends Error {
  constructor(message: string, fields?: { code?: number; codeName?: string; status?: number; topic?: string });
  /// Builds an error from the relay's `{"code", "name", "message"}` object.
  static fromRelay(body: { code?: number; name?: string; message?: string }, extra?: { status?: number; topic?: string }): TernError;
  readonly name: 'TernError';
  /// The relay's error code (103, ...), a close code (4001 unauthorized, 4002 token expired) when the client stopped, or 0 for the client's own errors.
  code: number;
  /// The relay's error name (`permission_denied`, ...) or the client's: `connection_lost`, `closed`,
  /// `not_connected`, `not_available_over_sse`, `http_error`, `unsubscribed`, `token_error`,
  /// `websocket_unavailable`, `sse_unavailable`.
  codeName: string;
  /// The HTTP status, for errors from HTTP publish.
  status?: number;
  /// The topic the error is about, when known.
  topic?: string;
}

/// The subscribe reply. With `since`: `recovered`, `publications` and, when not recovered, `reason`.
export interface SubscribeReply {
  topic: string;
  epoch: string;
  offset: number;
  recovered?: boolean;
  reason?: 'epoch_changed' | 'evicted' | 'position_ahead' | 'no_history' | 'too_large' | string;
  publications?: Array<{ topic: string; epoch: string; offset: number; id?: string; user?: string; data: JSONValue }>;
}

/// The publish acknowledgement. `epoch` and `offset` are absent for volatile publications.
export interface PublishAck {
  topic: string;
  epoch?: string;
  offset?: number;
  /// True when the id had been seen: the first position is returned and nothing is delivered again.
  duplicate: boolean;
  /// The idempotency id used (durable publications).
  id?: string;
}

export interface PresenceEntry {
  client: string;
  user: string;
  region: string;
}

export interface PresenceReply {
  topic: string;
  total: number;
  truncated: boolean;
  entries: PresenceEntry[];
}

export interface PresenceStatsReply {
  topic: string;
  clients: number;
  users: number;
}

export interface ConnectedEvent {
  transport: Transport;
  /// The connection id, user and region (null over SSE).
  client: string | null;
  user: string | null;
  region: string | null;
}

export interface DisconnectedEvent {
  transport: Transport;
  /// The close code (4001..4006, 1006, ...) or null when unknown.
  code: number | null;
  reason: string;
  willReconnect: boolean;
  /// The delay before the next attempt: the relay's advice or the backoff; null when the browser's EventSource reconnects by itself.
  delayMs: number | null;
}

export interface SubscribedEvent {
  topic: string;
  position: Position | null;
  /// Whether missed publications were replayed; undefined for a subscribe without `since`.
  recovered?: boolean;
}

/// A publication, delivered once per position even across reconnects.
export interface PublicationEvent {
  topic: string;
  epoch: string;
  offset: number;
  position: Position;
  /// The publisher's idempotency id, when given.
  id?: string;
  /// The publishing user, when known.
  user?: string;
  data: JSONValue;
  /// On a subscription made with `trace: true`: the relays that handled it, in order.
  trace?: TraceHop[];
}

/// One relay's handling of a traced publication (docs/PROTOCOL.md, "Per-hop timestamps").
export interface TraceHop {
  region: string;
  step: 'received' | 'sequenced' | 'relayed' | 'delivered';
  /// Unix milliseconds (with microsecond decimals) by that relay's own wall clock.
  at: number;
}

export interface PresenceEvent {
  topic: string;
  client: string;
  user: string;
  region: string;
}

export interface VolatileEvent {
  topic: string;
  user?: string;
  data: JSONValue;
}

/// History could not fill a gap (`recovered: false` or a `gap` push): reload the topic's
/// state from its source of truth; delivery continues after `position`.
export interface ResyncEvent {
  topic: string;
  reason: string;
  position: Position | null;
}

/// The stream continues in another epoch (a failover or its heal); nothing was lost.
/// Offsets in the new epoch may skip publications already delivered.
export interface EpochEvent {
  topic: string;
  position: Position;
  previous: Position | null;
}

export interface StateEvent {
  state: ClientState;
  previous: ClientState;
  transport: Transport;
  reason?: string;
}

export interface TernEventMap {
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  subscribed: SubscribedEvent;
  publication: PublicationEvent;
  join: PresenceEvent;
  leave: PresenceEvent;
  volatile: VolatileEvent;
  resync: ResyncEvent;
  epoch: EpochEvent;
  error: TernError;
  state: StateEvent;
}

/// The event listeners receive; the payload is in `detail`.
export class TernEvent<T = unknown> extends Event {
  constructor(type: string, detail: T);
  readonly detail: T;
}

/// A Tern client: connects over WebSocket (or SSE), resubscribes and recovers by
/// position after every reconnect, and delivers each publication once.
export class TernClient extends EventTarget {
  /// A client for the relay's WebSocket URL, e.g. `wss://relay.example/ws`. Call `connect()` to start.
  constructor(url: string, options?: TernClientOptions);

  /// `idle`, `connecting`, `connected`, `reconnecting` or `closed`.
  readonly state: ClientState;
  /// The transport in use.
  readonly transport: Transport;
  /// The topics subscribed to, in subscription order.
  readonly topics: string[];

  /// The last position delivered (or recovered to) for `topic`, or null.
  position(topic: string): Position | null;

  /// Starts connecting and keeps reconnecting until `close()` or a refusal.
  /// Resolves once connected; rejects if the client stops first (e.g. 4001).
  connect(): Promise<void>;
  /// Drops the current connection and reconnects at once, recovering every subscription.
  reconnect(): void;
  /// Closes and stops reconnecting; subscriptions and positions are kept for a later `connect()`.
  close(): void;

  /// Subscribes (and resubscribes after every reconnect from the last delivered position).
  /// `since` starts from a position the app kept; `trace` asks for per-hop timestamps.
  subscribe(topic: string, options?: { since?: Position; trace?: boolean }): Promise<SubscribeReply>;
  /// Stops receiving `topic`.
  unsubscribe(topic: string): Promise<{ topic: string }>;
  /// Publishes any JSON value. Durable publications carry `id` (a random UUID when not given)
  /// and are re-sent with it after a reconnect until answered. Over SSE it is an HTTP POST
  /// to /api/publish with `Authorization: Bearer <token>`; volatile publications need a WebSocket.
  publish(topic: string, data: JSONValue, options?: { id?: string; volatile?: boolean }): Promise<PublishAck>;
  /// Lists up to `limit` members (WebSocket only).
  presence(topic: string, options?: { limit?: number }): Promise<PresenceReply>;
  /// Counts clients and users (WebSocket only).
  presenceStats(topic: string): Promise<PresenceStatsReply>;
  /// Round-trips a ping (WebSocket only).
  ping(): Promise<Record<string, never>>;

  /// Calls `fn(detail)` for every event of `type`; returns a function that removes it.
  on<K extends keyof TernEventMap>(type: K, fn: (detail: TernEventMap[K]) => void): () => void;

  addEventListener<K extends keyof TernEventMap>(
    type: K,
    listener: (event: TernEvent<TernEventMap[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof TernEventMap>(
    type: K,
    listener: (event: TernEvent<TernEventMap[K]>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}

/// A reconnect delay: uniformly random in [0, min(maxMs, initialMs * 2^attempt)].
export function backoffDelay(attempt: number, options?: BackoffOptions, random?: () => number): number;

/// Encodes positions as a Tern cursor (`topic|epoch|offset` joined with commas, topics sorted), as SSE ids and `?since=` use.
export function encodeCursor(positions: Map<string, Position | null> | Record<string, Position | null>): string;

/// Decodes a Tern cursor; null when malformed.
export function decodeCursor(text: string): Map<string, Position> | null;

/// The relay's HTTP base URL for its WebSocket URL.
export function httpUrlFor(wsUrl: string): string;
