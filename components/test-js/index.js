// A test guest in JavaScript: the helper's answers, failures and event handling.
//
// - `GET /hello` → 200 JSON with the path, the caller's subject and a config value
// - `GET /count` → a counter in kv, incremented per call
// - `GET /raise` → an exception in the handler: the helper's 500 problem body
// - `GET /trap` → the instance traps (an unreachable instruction): the host's 502
// - `GET /call/{service}/{path...}` → calls another service and answers what it said
// - events: data `fail` throws (the host retries, then dead-letters), `trap` traps,
//   anything else is counted under `events/{topic}`
import { service, HttpError, Response, kv, auth, call, config } from '../js/microhost.js';

function trap() {
  // Unbounded recursion overflows the stack: a trap, not an exception the engine can
  // catch.
  return trap() + 1;
}

async function handle(req) {
  const segments = req.segments();
  const path = segments.join('/');
  if (path === 'hello') {
    return Response.json(200, { path: req.path, subject: auth.subject(req), greeting: config('greeting'), lang: 'javascript' });
  }
  if (path === 'count') {
    const store = kv.open();
    const count = (store.getJson('count') ?? 0) + 1;
    store.setJson('count', count);
    return Response.json(200, { count });
  }
  if (path === 'raise') throw new Error('raising in the handler, on purpose');
  if (path === 'trap') return Response.json(200, { never: trap() });
  if (segments[0] === 'call' && segments.length >= 2) {
    const reply = await call(segments[1], '/' + segments.slice(2).join('/'));
    const body = new Uint8Array(await reply.arrayBuffer());
    return new Response(reply.status, [['content-type', reply.headers.get('content-type') ?? 'text/plain']], body);
  }
  if (path === 'events') {
    const store = kv.open();
    const counts = {};
    for (const key of store.keysWithPrefix('events/')) counts[key.slice('events/'.length)] = store.getJson(key);
    return Response.json(200, counts);
  }
  throw HttpError.notFound(`no test-js route at ${JSON.stringify(req.path)}`);
}

function onEvent(event) {
  const text = event.text();
  if (text === 'fail') throw new Error(`failing on event ${event.id}, on purpose`);
  if (text === 'trap') trap();
  const store = kv.open();
  const key = `events/${event.topic}`;
  store.setJson(key, (store.getJson(key) ?? 0) + 1);
}

export const { subscriber, lifecycle } = service({ handle, onEvent });
