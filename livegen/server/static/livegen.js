// livegen.js: a browser client for the livegen stream (docs/protocol.md, "JavaScript client").
//
// One WebSocket speaking JSON text messages, reconnecting on its own. `send()` never queues: at
// most `maxInFlight` inputs are unanswered at a time and a newer input replaces one that is still
// waiting in the page, so the page, like the server, lets the latest input win. Three in flight
// is one computing, one in the server's latest-wins slot and one on its way to replace it: with
// two, the slot's input is never replaced and goes stale, which doubles the latency whenever the
// model is slower than the input (measured: docs/benchmarks.md).
//
// Credentials come from an optional `tokenProvider` (async, returns {token, expires_at} or null),
// asked before every connect: a browser cannot set headers on a WebSocket, so the token rides as
// a `bearer.<token>` subprotocol beside `livegen`. A session outlives its token by sending a
// `refresh` with a fresh one at 90% of the token's life; a quiet session sends `ping` so the
// server's idle timeout does not close it. A session that ends anyway (expired, revoked, idle)
// reconnects like any other, with a fresh token.

export function streamUrl(base = location.href) {
  const url = new URL('/v1/stream', base);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('codec', 'json');
  return url.href;
}

export function toBase64(bytes) {
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

export function fromBase64(text) {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function percentile(sorted, q) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

// Frames per second and input-to-frame latency over a sliding window, plus running counts.
export class StreamStats {
  constructor(windowMs = 5000) {
    this.windowMs = windowMs;
    this.recent = []; // {at, latencyMs} per frame received
    this.sent = 0;
    this.frames = 0;
    this.superseded = 0; // replaced on the server before it ran
    this.dropped = 0; // replaced in the page before it was sent
    this.skipped = 0; // answered by the last frame (similarity filter)
    this.blocked = 0; // stopped by safety: prompt moderation or the output check
    this.errors = 0;
  }

  addFrame(latencyMs, at = performance.now()) {
    this.frames += 1;
    this.recent.push({at, latencyMs});
    this.#trim(at);
  }

  #trim(now) {
    while (this.recent.length && now - this.recent[0].at > this.windowMs) this.recent.shift();
  }

  summary(now = performance.now()) {
    this.#trim(now);
    const latencies = this.recent.map((f) => f.latencyMs).sort((a, b) => a - b);
    const span = this.recent.length > 1 ? now - this.recent[0].at : 0;
    return {
      fps: span > 0 ? (this.recent.length - 1) / (span / 1000) : 0,
      p50: percentile(latencies, 0.5),
      p95: percentile(latencies, 0.95),
      sent: this.sent, frames: this.frames, superseded: this.superseded,
      dropped: this.dropped, skipped: this.skipped, blocked: this.blocked, errors: this.errors,
    };
  }
}

const SUBPROTOCOL = 'livegen';
const TOKEN_SUBPROTOCOL = 'bearer.';
const REFRESH_AT = 0.9; // of the token's remaining life, as fal's client does
const MIN_REFRESH_MS = 1000; // closer to expiry than this, let it expire: the reconnect gets a fresh token
const MAX_PING_MS = 30000;
const REFRESH_REFUSALS = new Set(['unauthorized', 'forbidden', 'token_expired', 'rate_limited']);

// Events: 'status' {state: 'connecting'|'open'|'reconnecting'|'closed', attempt, delayMs, reason},
// 'hello' (the server's hello), 'frame' {frame, blob, latencyMs}, 'superseded', 'skipped', 'blocked',
// 'audio' {chunk, samples: Float32Array}, 'speech_end', 'cancelled', 'refreshed' {expires_at},
// 'error' (an error message: {id, code, message, retry_after_ms}).
export class LivegenClient extends EventTarget {
  #generation = 0; // bumped by each connect(): a slower token fetch or timer of an older one gives up
  #expiresAt = null; // the session's token expiry (Unix seconds, the server's clock)
  #refreshTimer = null;
  #pingTimer = null;
  #refreshing = false; // a `refresh` is unanswered: an id-less credential error is its answer

  constructor({url = streamUrl(), maxInFlight = 3, minDelayMs = 250, maxDelayMs = 4000, tokenProvider = null} = {}) {
    super();
    this.url = url;
    this.tokenProvider = tokenProvider;
    this.maxInFlight = maxInFlight;
    this.minDelayMs = minDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.stats = new StreamStats();
    this.hello = null;
    this.state = 'closed';
    this.ws = null;
    this.nextId = 0;
    this.inFlight = new Map(); // id -> time sent
    this.waiting = null; // the newest input not yet sent
    this.attempt = 0;
    this.stopped = false;
    this.refreshes = 0; // tokens replaced in open sessions
  }

  get open() {
    return this.state === 'open';
  }

  // True when an input sent now would go out at once rather than wait in the page.
  get canSend() {
    return this.open && this.inFlight.size < this.maxInFlight;
  }

  async connect() {
    this.stopped = false;
    const generation = ++this.#generation;
    this.#setState('connecting');
    let credential;
    try {
      credential = await this.#credential();
    } catch (error) {
      // No token (the server is down, or refuses this page one): try again like a lost socket.
      if (generation === this.#generation && !this.stopped) this.#retry(error.message || String(error));
      return;
    }
    if (generation !== this.#generation || this.stopped) return; // reconnect() or close() came meanwhile
    const ws = credential?.token
      ? new WebSocket(this.url, [SUBPROTOCOL, TOKEN_SUBPROTOCOL + credential.token])
      : new WebSocket(this.url);
    this.ws = ws;
    ws.onmessage = (event) => this.ws === ws && this.#receive(JSON.parse(event.data));
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.#dropSession();
      if (this.stopped) {
        this.#setState('closed');
        return;
      }
      this.#retry(event.reason || `code ${event.code}`);
    };
  }

  // Drop the socket and open a fresh one (e.g. once the server turns ready).
  reconnect() {
    const ws = this.ws;
    this.ws = null;
    this.#dropSession();
    if (ws) ws.close();
    this.connect();
  }

  close() {
    this.stopped = true;
    this.#generation += 1; // a token fetch under way opens nothing
    if (this.ws) {
      this.ws.close();
    } else {
      this.#dropSession();
      this.#setState('closed');
    }
  }

  // Send a `generate` (fields as in docs/protocol.md; `image` as a Uint8Array). Returns its id.
  send(fields) {
    const input = {type: 'generate', ...fields, id: String(++this.nextId)};
    if (input.image instanceof Uint8Array) input.image = toBase64(input.image);
    if (this.canSend) {
      this.#transmit(input);
    } else {
      if (this.waiting) this.stats.dropped += 1;
      this.waiting = input;
    }
    return input.id;
  }

  // Speak text (fields as in docs/protocol.md, "Speech"); not throttled: every piece matters.
  // Returns the utterance id; pass it back as `id` with `final: false` pieces to extend it.
  speak(fields) {
    const input = {type: 'speak', id: fields.id ?? String(++this.nextId), ...fields};
    if (this.open) this.ws.send(JSON.stringify(input));
    return input.id;
  }

  cancel(id) {
    if (this.open) this.ws.send(JSON.stringify({type: 'cancel', id}));
  }

  // One of the session's latest frames as a file with signed Content Credentials: a Blob.
  export(frameId) {
    return new Promise((resolve, reject) => {
      const answer = ({detail}) => {
        if (detail.id !== frameId) return;
        this.removeEventListener('exported', answer);
        this.removeEventListener('error', answer);
        if (detail.type === 'exported') resolve(new Blob([fromBase64(detail.image)], {type: `image/${detail.format}`}));
        else reject(new Error(`${detail.code}: ${detail.message}`));
      };
      this.addEventListener('exported', answer);
      this.addEventListener('error', answer);
      this.ws.send(JSON.stringify({type: 'export', id: frameId}));
    });
  }

  #transmit(input) {
    this.inFlight.set(input.id, performance.now());
    this.stats.sent += 1;
    this.ws.send(JSON.stringify(input));
  }

  async #credential() {
    return this.tokenProvider ? this.tokenProvider() : null;
  }

  #retry(reason) {
    this.attempt += 1;
    const delayMs = Math.min(this.maxDelayMs, this.minDelayMs * 2 ** (this.attempt - 1));
    this.#setState('reconnecting', {attempt: this.attempt, delayMs, reason});
    const generation = this.#generation;
    setTimeout(() => this.stopped || generation !== this.#generation || this.connect(), delayMs);
  }

  // What belonged to the socket that ended: its hello, its unanswered inputs, its timers.
  #dropSession() {
    this.hello = null;
    this.inFlight.clear(); // their outcomes will never come
    clearTimeout(this.#refreshTimer);
    clearInterval(this.#pingTimer);
    this.#refreshTimer = this.#pingTimer = this.#expiresAt = null;
    this.#refreshing = false;
  }

  #startUpkeep(hello) {
    this.#scheduleRefresh(hello.expires_at);
    if (hello.idle_seconds) {
      const everyMs = Math.min(MAX_PING_MS, (hello.idle_seconds * 1000) / 3);
      this.#pingTimer = setInterval(() => this.open && this.ws.send(JSON.stringify({type: 'ping'})), everyMs);
    }
  }

  // expires_at is on the server's clock: a browser clock far off refreshes too late, and the
  // session then ends with token_expired and reconnects with a fresh token.
  #scheduleRefresh(expiresAt) {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = null;
    this.#expiresAt = expiresAt ?? null;
    if (expiresAt == null || !this.tokenProvider) return;
    const remainingMs = expiresAt * 1000 - Date.now();
    if (remainingMs < MIN_REFRESH_MS) return;
    this.#refreshTimer = setTimeout(() => this.#refresh(), remainingMs * REFRESH_AT);
  }

  async #refresh() {
    const ws = this.ws;
    let credential = null;
    try {
      credential = await this.#credential();
    } catch {
      // handled below as no token: try again nearer expiry
    }
    if (ws !== this.ws || !this.open) return;
    if (!credential?.token) {
      this.#scheduleRefresh(this.#expiresAt);
      return;
    }
    this.#refreshing = true;
    ws.send(JSON.stringify({type: 'refresh', token: credential.token}));
  }

  #setState(state, detail = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('status', {detail: {state, ...detail}}));
  }

  #receive(message) {
    if (message.type === 'hello') {
      this.hello = message;
      this.attempt = 0;
      this.#setState('open');
      this.#startUpkeep(message);
      this.dispatchEvent(new CustomEvent('hello', {detail: message}));
      this.#sendWaiting();
      return;
    }
    // Upkeep answers are about the session, not about inputs: no inFlight, no stats.
    if (message.type === 'pong') return;
    if (message.type === 'refreshed') {
      this.#refreshing = false;
      this.refreshes += 1;
      this.#scheduleRefresh(message.expires_at);
      this.dispatchEvent(new CustomEvent('refreshed', {detail: message}));
      return;
    }
    if (message.type === 'error' && message.id == null && this.#refreshing && REFRESH_REFUSALS.has(message.code)) {
      // The refresh was refused; the session lasts until the old token expires, so try again nearer then.
      this.#refreshing = false;
      this.#scheduleRefresh(this.#expiresAt);
      this.dispatchEvent(new CustomEvent('error', {detail: message}));
      return;
    }
    const sentAt = this.inFlight.get(message.id);
    this.inFlight.delete(message.id);
    if (message.type === 'frame') {
      const latencyMs = sentAt === undefined ? null : performance.now() - sentAt;
      if (latencyMs !== null) this.stats.addFrame(latencyMs);
      const blob = new Blob([fromBase64(message.image)], {type: `image/${message.format}`});
      this.dispatchEvent(new CustomEvent('frame', {detail: {frame: message, blob, latencyMs}}));
    } else if (message.type === 'superseded') {
      this.stats.superseded += 1;
      this.dispatchEvent(new CustomEvent('superseded', {detail: message}));
    } else if (message.type === 'skipped') {
      this.stats.skipped += 1;
      this.dispatchEvent(new CustomEvent('skipped', {detail: message}));
    } else if (message.type === 'blocked') {
      this.stats.blocked += 1;
      this.dispatchEvent(new CustomEvent('blocked', {detail: message}));
    } else if (message.type === 'exported') {
      this.dispatchEvent(new CustomEvent('exported', {detail: message}));
    } else if (message.type === 'audio') {
      const pcm = new Int16Array(fromBase64(message.pcm).buffer);
      const samples = Float32Array.from(pcm, (v) => v / 32768);
      this.dispatchEvent(new CustomEvent('audio', {detail: {chunk: message, samples}}));
    } else if (message.type === 'speech_end' || message.type === 'cancelled') {
      this.dispatchEvent(new CustomEvent(message.type, {detail: message}));
    } else if (message.type === 'error') {
      this.stats.errors += 1;
      this.dispatchEvent(new CustomEvent('error', {detail: message}));
    }
    this.#sendWaiting();
  }

  #sendWaiting() {
    if (this.waiting && this.canSend) {
      const input = this.waiting;
      this.waiting = null;
      this.#transmit(input);
    }
  }
}
