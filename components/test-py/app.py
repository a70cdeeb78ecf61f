"""A test guest in Python: the helper's answers, failures and event handling.

Routes (under any prefix: from the first segment that names one):

- ``GET /hello`` → 200 JSON with the path, the caller's subject and a config value
- ``GET /count`` → a counter in kv, incremented per call
- ``GET /raise`` → an exception in the handler: the helper's 500 problem body
- ``GET /trap`` → the instance traps (SystemExit escapes the helper): the host's 502
- ``GET /call/{service}/{path...}`` → calls another service and answers what it said
- events: data ``fail`` raises (the host retries, then dead-letters), ``trap`` traps,
  anything else is counted under ``events/{topic}``
"""

import json

from microhost import HttpError, Response, Service, auth, call, config, kv

service = Service()


ROUTES = ("hello", "count", "raise", "trap", "call", "events")


@service.handler
def handle(req):
    # Served under any route prefix: the routes are the segments from the first known one.
    segments = req.segments()
    while segments and segments[0] not in ROUTES:
        segments = segments[1:]
    if segments == ["hello"]:
        return Response.json(
            200, {"path": req.path, "subject": auth.subject(req), "greeting": config("greeting"), "lang": "python"}
        )
    if segments == ["count"]:
        store = kv.open()
        count = (store.get_json("count") or 0) + 1
        store.set_json("count", count)
        return Response.json(200, {"count": count})
    if segments == ["raise"]:
        raise ValueError("raising in the handler, on purpose")
    if segments == ["trap"]:
        raise SystemExit("trapping in the handler, on purpose")
    if len(segments) >= 2 and segments[0] == "call":
        reply = call(segments[1], "GET", "/" + "/".join(segments[2:]))
        return Response(reply.status, [("content-type", reply.header("content-type") or "text/plain")], reply.body)
    if segments == ["events"]:
        store = kv.open()
        counts = {k[len("events/") :]: store.get_json(k) for k in store.keys_with_prefix("events/")}
        return Response.json(200, counts)
    raise HttpError.not_found(f"no test-py route at {req.path!r}")


@service.on_event
def on_event(event):
    text = event.text()
    if text == "fail":
        raise RuntimeError(f"failing on event {event.id}, on purpose")
    if text == "trap":
        raise SystemExit("trapping on an event, on purpose")
    store = kv.open()
    key = f"events/{event.topic}"
    store.set_json(key, (store.get_json(key) or 0) + 1)


IncomingHandler, Subscriber, Lifecycle = service.exports()
