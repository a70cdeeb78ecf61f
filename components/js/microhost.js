// Guest side of the microhost contract for JavaScript services (componentize-js): a
// buffered request/response API over the `service` world, as the Rust `microhost-guest`
// crate gives Rust services.
//
//   import { service, Response, HttpError, kv, events } from '../js/microhost.js';
//   export const { subscriber, lifecycle } = service({
//     async handle(req) {
//       const store = kv.open();
//       const count = (store.getJson('count') ?? 0) + 1;
//       store.setJson('count', count);
//       return Response.json(200, { path: req.path, count });
//     },
//     onEvent(event) { ... },   // optional (may be async): throw to have the host retry it
//     health() { ... },         // optional: throw to report unhealthy
//   });
//
// Each call runs in a fresh instance: nothing survives between calls except what is in
// `kv`. A thrown `HttpError` is answered as its response; any other exception is a 500
// problem body naming it.

import { open as openBucket } from 'wasi:keyvalue/store@0.2.0-draft';
import { get as configGet } from 'wasi:config/store@0.2.0-rc.1';
import { publish as publishEvent } from 'microhost:platform/events@0.1.0';
import {
  hashPassword as hostHashPassword,
  verifyPassword as hostVerifyPassword,
  issueToken as hostIssueToken,
} from 'microhost:platform/auth@0.1.0';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Most items one page may hold. */
export const MAX_LIMIT = 100;
/** Page size when neither the request nor the config (`default_page_size`) sets one. */
export const DEFAULT_LIMIT = 20;

/** The message of an error a host call threw (`{ tag, val }` payloads included). */
function messageOf(e) {
  const payload = e && e.payload;
  if (payload !== undefined) {
    if (typeof payload === 'string') return payload;
    if (payload && typeof payload.val === 'string') return payload.val;
    if (payload && payload.tag) return payload.tag;
  }
  if (e instanceof Error) return e.message;
  return String(e);
}

/** A response, written whole after the handler returns. */
export class Response {
  constructor(status, headers = [], body = new Uint8Array()) {
    this.status = status;
    this.headers = headers;
    this.body = typeof body === 'string' ? encoder.encode(body) : body;
  }

  static text(status, text) {
    return new Response(status, [['content-type', 'text/plain; charset=utf-8']], text);
  }

  static json(status, value) {
    return new Response(status, [['content-type', 'application/json']], JSON.stringify(value));
  }

  /** An RFC 9457 problem body: `{type, title, status, detail}`. */
  static problem(status, title, detail) {
    return new Response(
      status,
      [['content-type', 'application/problem+json']],
      JSON.stringify({ type: 'about:blank', title, status, detail }),
    );
  }

  withHeader(name, value) {
    this.headers.push([name, value]);
    return this;
  }

  header(name) {
    const found = this.headers.find(([n]) => n.toLowerCase() === name.toLowerCase());
    return found ? found[1] : null;
  }
}

/** An error answered as its response (a 4xx is a value like any other). */
export class HttpError extends Error {
  constructor(response) {
    let detail = `answered with status ${response.status}`;
    try {
      detail = JSON.parse(decoder.decode(response.body)).detail ?? detail;
    } catch (_) {
      // Not a problem body: keep the status.
    }
    super(detail);
    this.response = response;
  }

  static problem(status, title, detail) {
    return new HttpError(Response.problem(status, title, detail));
  }
  static badRequest(detail) {
    return HttpError.problem(400, 'Bad Request', detail);
  }
  static unauthorized(detail) {
    return HttpError.problem(401, 'Unauthorized', detail);
  }
  static forbidden(detail) {
    return HttpError.problem(403, 'Forbidden', detail);
  }
  static notFound(detail) {
    return HttpError.problem(404, 'Not Found', detail);
  }
  /** 405 with the `Allow` header listing what the resource accepts. */
  static methodNotAllowed(method, allow) {
    const response = Response.problem(
      405,
      'Method Not Allowed',
      `method ${JSON.stringify(method)} is not allowed here; allowed: ${allow}`,
    );
    return new HttpError(response.withHeader('allow', allow));
  }
  static conflict(detail) {
    return HttpError.problem(409, 'Conflict', detail);
  }
  static unprocessable(detail) {
    return HttpError.problem(422, 'Unprocessable Content', detail);
  }
}

/** A request, read whole before the handler runs. */
export class Request {
  constructor(method, url, headers, body) {
    this.method = method;
    this.url = url;
    this.path = url.pathname;
    this.query = url.searchParams;
    this.headers = headers;
    this.body = body;
  }

  static async read(request) {
    const body = new Uint8Array(await request.arrayBuffer());
    return new Request(request.method, new URL(request.url), request.headers, body);
  }

  header(name) {
    return this.headers.get(name);
  }

  queryParam(name) {
    return this.query.get(name);
  }

  /** The path's non-empty segments: `/api/x/1` → `['api', 'x', '1']`. */
  segments() {
    return this.path.split('/').filter((s) => s.length > 0);
  }

  text() {
    return decoder.decode(this.body);
  }

  /** The body as JSON, or a 400 problem saying why it is not. */
  json() {
    try {
      return JSON.parse(this.text());
    } catch (e) {
      throw HttpError.badRequest(`the body is not valid JSON: ${messageOf(e)}`);
    }
  }

  /** The page a list route is asked for (`?limit=N&after=ID`); a bad limit is a 400. */
  page() {
    return PageRequest.fromRequest(this);
  }
}

/** What page a client asked for: `limit` (1 to MAX_LIMIT) and `after` (an id). */
export class PageRequest {
  constructor(limit, after) {
    this.limit = limit;
    this.after = after;
  }

  static fromRequest(req) {
    const raw = req.queryParam('limit');
    let limit;
    if (raw === null) {
      // A bad config value is the operator's, not the client's.
      const fallback = Number.parseInt(config('default_page_size') ?? '', 10);
      limit = Number.isInteger(fallback) && fallback >= 1 ? Math.min(fallback, MAX_LIMIT) : DEFAULT_LIMIT;
    } else {
      const n = /^[0-9]+$/.test(raw) ? Number(raw) : NaN;
      if (!(n >= 1 && n <= MAX_LIMIT)) {
        throw HttpError.badRequest(
          `query parameter "limit" must be a whole number from 1 to ${MAX_LIMIT}, got ${JSON.stringify(raw)}`,
        );
      }
      limit = n;
    }
    const after = req.queryParam('after');
    return new PageRequest(limit, after ? after : null);
  }

  /** The page of `ids` (sorted ascending) this request selects: `{items, next}`. */
  select(ids) {
    const after = this.after ?? '';
    const rest = ids.filter((id) => id > after);
    const items = rest.slice(0, this.limit);
    const next = rest.length > this.limit ? items[items.length - 1] : null;
    return { items, next };
  }
}

/** The service's keyspace (`wasi:keyvalue`): writes commit only if the call succeeds. */
export const kv = {
  open(name = 'default') {
    return new Store(name);
  },
};

export class Store {
  constructor(name) {
    try {
      this.bucket = openBucket(name);
    } catch (e) {
      throw new Error(`opening bucket ${JSON.stringify(name)}: ${messageOf(e)}`);
    }
  }

  #call(what, f) {
    try {
      return f();
    } catch (e) {
      throw new Error(`kv ${what}: ${messageOf(e)}`);
    }
  }

  get(key) {
    return this.#call('get', () => this.bucket.get(key)) ?? null;
  }
  set(key, value) {
    const bytes = typeof value === 'string' ? encoder.encode(value) : value;
    this.#call('set', () => this.bucket.set(key, bytes));
  }
  delete(key) {
    this.#call('delete', () => this.bucket.delete(key));
  }
  exists(key) {
    return this.#call('exists', () => this.bucket.exists(key));
  }
  getJson(key) {
    const raw = this.get(key);
    if (raw === null) return null;
    try {
      return JSON.parse(decoder.decode(raw));
    } catch (e) {
      throw new Error(`stored value of ${JSON.stringify(key)} is not valid JSON: ${messageOf(e)}`);
    }
  }
  setJson(key, value) {
    this.set(key, JSON.stringify(value));
  }

  /** Every key that starts with `prefix`, in byte order, following the store's cursor. */
  keysWithPrefix(prefix) {
    const keys = [];
    let cursor;
    for (;;) {
      const page = this.#call('list-keys', () => this.bucket.listKeys(cursor));
      for (const key of page.keys) if (key.startsWith(prefix)) keys.push(key);
      if (page.cursor === undefined || page.cursor === null) return keys;
      cursor = page.cursor;
    }
  }

  /** One page of the ids under `prefix` (the rest of each key): `{items, next}`. */
  pageIds(prefix, page) {
    return page.select(this.keysWithPrefix(prefix).map((k) => k.slice(prefix.length)));
  }

  /** One page of the JSON values under `prefix`; `next` is the id of the last one. */
  pageJson(prefix, page) {
    const ids = this.pageIds(prefix, page);
    const items = [];
    for (const id of ids.items) {
      const value = this.getJson(prefix + id);
      if (value !== null) items.push(value);
    }
    return { items, next: ids.next };
  }
}

/** Publishing events (`microhost:platform/events`): delivered only if the call succeeds. */
export const events = {
  publish(topic, data, { key, contentType } = {}) {
    const bytes = typeof data === 'string' ? encoder.encode(data) : data;
    try {
      return publishEvent(topic, bytes, { key, contentType });
    } catch (e) {
      throw new Error(`publishing to ${JSON.stringify(topic)}: ${messageOf(e)}`);
    }
  },
  publishJson(topic, key, value) {
    return events.publish(topic, JSON.stringify(value), { key, contentType: 'application/json' });
  },
};

/** Passwords and tokens, done by the host; and the identity the gateway verified. */
export const auth = {
  /** The verified subject of the request's token (clients cannot forge the header). */
  subject(req) {
    return req.header('x-microhost-subject');
  },
  /** The verified subject, or a 401 problem. */
  requireSubject(req) {
    const subject = auth.subject(req);
    if (!subject) throw HttpError.unauthorized('this route needs a token');
    return subject;
  },
  claims(req) {
    const raw = req.header('x-microhost-claims');
    try {
      return raw ? JSON.parse(raw) : null;
    } catch (_) {
      return null;
    }
  },
  /** The service that made this request, when another service did. */
  callingService(req) {
    return req.header('x-microhost-caller');
  },
  hashPassword(password) {
    try {
      return hostHashPassword(password);
    } catch (e) {
      throw new Error(`hashing: ${messageOf(e)}`);
    }
  },
  verifyPassword(password, hash) {
    try {
      return hostVerifyPassword(password, hash);
    } catch (e) {
      throw new Error(`verifying: ${messageOf(e)}`);
    }
  },
  issueToken(subject, claims, ttlSeconds) {
    try {
      return hostIssueToken(subject, JSON.stringify(claims ?? {}), ttlSeconds);
    } catch (e) {
      throw new Error(`issuing a token: ${messageOf(e)}`);
    }
  },
};

/** Calling another service: `call('product', '/api/products/1')` → a fetch Response. */
export async function call(service, path, init = {}) {
  return fetch(`http://${service}.internal${path}`, init);
}

const base64 = (bytes) => {
  let text = '';
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
};

/**
 * Outbound webhooks, as the Standard Webhooks spec has them: the payload is a
 * CloudEvent (structured mode, `application/cloudevents+json`), signed with HMAC-SHA256
 * over `{id}.{timestamp}.{body}` (`webhook-id`, `webhook-timestamp`,
 * `webhook-signature: v1,{base64}`), and sent with `Idempotency-Key: {id}` so a
 * receiver can drop a redelivery. A secret `whsec_{base64}` is the key's bytes in
 * base64; any other secret is used as text. `send` throws unless the receiver answers
 * 2xx: in an event handler, the host then retries the event (and dead-letters it).
 */
export const webhooks = {
  async sign(secret, id, timestamp, body) {
    const keyBytes = secret.startsWith('whsec_')
      ? Uint8Array.from(atob(secret.slice(6)), (c) => c.charCodeAt(0))
      : encoder.encode(secret);
    const key = await crypto.subtle.importKey(
      'raw',
      keyBytes,
      { name: 'HMAC', hash: 'SHA-256' },
      false,
      ['sign'],
    );
    const mac = await crypto.subtle.sign('HMAC', key, encoder.encode(`${id}.${timestamp}.${body}`));
    return `v1,${base64(new Uint8Array(mac))}`;
  },

  /**
   * POSTs `{ id, type, source, time, data, traceparent }` as a CloudEvent to `url`,
   * signed with `secret`. The same `id` on every retry.
   */
  async send(url, secret, { id, type, source, time, data, traceparent }) {
    const event = {
      specversion: '1.0',
      id,
      source,
      type,
      time,
      datacontenttype: 'application/json',
      data,
    };
    if (traceparent) event.traceparent = traceparent;
    const body = JSON.stringify(event);
    const timestamp = String(Math.floor(Date.now() / 1000));
    const headers = {
      'content-type': 'application/cloudevents+json',
      'idempotency-key': id,
      'webhook-id': id,
      'webhook-timestamp': timestamp,
      'webhook-signature': await webhooks.sign(secret, id, timestamp, body),
    };
    if (traceparent) headers.traceparent = traceparent;
    let response;
    try {
      response = await fetch(url, { method: 'POST', headers, body });
    } catch (e) {
      throw new Error(`webhook ${url}: ${messageOf(e)}`);
    }
    if (!response.ok) {
      throw new Error(`webhook ${url} answered ${response.status}`);
    }
    return response.status;
  },
};

/** A configuration value from the manifest (`[service.config]`), or null. */
export function config(key) {
  try {
    return configGet(key) ?? null;
  } catch (_) {
    return null;
  }
}

/** Milliseconds since the Unix epoch. */
export function nowMs() {
  return Date.now();
}

/** A new id that sorts by creation time: 12 hex digits of milliseconds, 12 random. */
export function newId() {
  const random = new Uint8Array(6);
  crypto.getRandomValues(random);
  const hex = (n, width) => n.toString(16).padStart(width, '0');
  return hex(Date.now() % 2 ** 48, 12) + Array.from(random, (b) => hex(b, 2)).join('');
}

/** An event as a subscriber receives it, with its data as text and JSON. */
export class Event {
  constructor(raw) {
    Object.assign(this, raw);
  }
  text() {
    return decoder.decode(this.data);
  }
  /** The data parsed as JSON, or an error naming the topic. */
  json() {
    try {
      return JSON.parse(this.text());
    } catch (e) {
      throw new Error(`${this.topic} event is not valid JSON: ${messageOf(e)}`);
    }
  }
}

async function answer(handle, request) {
  let req;
  try {
    req = await Request.read(request);
  } catch (e) {
    return Response.problem(400, 'Bad Request', messageOf(e));
  }
  try {
    return await handle(req);
  } catch (e) {
    if (e instanceof HttpError) return e.response;
    return Response.problem(500, 'Internal Server Error', messageOf(e));
  }
}

function toFetchResponse(response) {
  return new globalThis.Response(response.body, {
    status: response.status,
    headers: response.headers,
  });
}

/**
 * Serves `handlers.handle(req)` as the component's `wasi:http/incoming-handler` and
 * returns the `subscriber` and `lifecycle` exports; export them from the entry module.
 */
export function service({ handle, onEvent, health }) {
  addEventListener('fetch', (event) =>
    event.respondWith(answer(handle, event.request).then(toFetchResponse)),
  );
  return {
    subscriber: {
      handle(event) {
        const wrapped = new Event(event);
        if (!onEvent) {
          throw `this service does not handle events (got one from topic ${JSON.stringify(event.topic)})`;
        }
        // `result<_, string>`: the error is the message, for the retry log and the dead
        // letter. A handler may be async (the host waits for it).
        let done;
        try {
          done = onEvent(wrapped);
        } catch (e) {
          throw messageOf(e);
        }
        if (done && typeof done.then === 'function') {
          return done.then(
            () => undefined,
            (e) => {
              throw messageOf(e);
            },
          );
        }
      },
    },
    lifecycle: {
      health() {
        if (!health) return;
        try {
          health();
        } catch (e) {
          throw messageOf(e);
        }
      },
    },
  };
}
