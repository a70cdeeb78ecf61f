// A test guest in JavaScript: the helper's answers, failures and event handling.
//
// - `GET /hello` → 200 JSON with the path, the caller's subject and a config value
// - `GET /count` → a counter in kv, incremented per call
// - `GET /raise` → an exception in the handler: the helper's 500 problem body
// - `GET /hang` → never answers: the host stops it at its deadline (504). (SpiderMonkey
//   turns the faults that trap other guests, such as running out of stack or memory,
//   into exceptions, so a JavaScript handler's failures are the helper's 500s.)
// - `GET /call/{service}/{path...}` → calls another service and answers what it said
// - events: data `fail` throws an Error, `trap` throws something else (the host
//   retries, then dead-letters both),
//   anything else is counted under `events/{topic}`
import { service, HttpError, Response, kv, auth, call, config } from '../js/microhost.js';

function hang() {
  // A promise nothing will ever settle: the host stops the instance at its deadline.
  return new Promise(() => {});
}

const ROUTES = ['hello', 'count', 'raise', 'hang', 'call', 'events'];

async function handle(req) {
  // Served under any route prefix: the routes are the segments from the first known one.
  const segments = req.segments();
  while (segments.length > 0 && !ROUTES.includes(segments[0])) segments.shift();
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
  if (path === 'hang') return hang();
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
  // Not an Error: the helper still makes a message of it.
  if (text === 'trap') throw { thrown: 'not an Error' };
  const store = kv.open();
  const key = `events/${event.topic}`;
  store.setJson(key, (store.getJson(key) ?? 0) + 1);
}

export const { subscriber, lifecycle } = service({ handle, onEvent });
