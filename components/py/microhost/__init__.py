"""Guest side of the microhost contract for Python services (componentize-py): a
buffered request/response API over the ``service`` world, as the Rust
``microhost-guest`` crate gives Rust services.

    from microhost import Service, Response, HttpError, kv

    service = Service()

    @service.handler
    def handle(req):
        store = kv.open()
        count = (store.get_json("count") or 0) + 1
        store.set_json("count", count)
        return Response.json(200, {"path": req.path, "count": count})

    IncomingHandler, Subscriber, Lifecycle = service.exports()

Each call runs in a fresh instance: nothing survives between calls except what is in
``kv``. A raised ``HttpError`` is answered as its response; any other exception is a
500 problem body naming it. An ``on_event`` handler that raises has the host retry the
event (then dead-letter it); a ``health`` check that raises reports the version
unhealthy.
"""

import json
import os
import time
from urllib.parse import parse_qs, urlsplit

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import auth as host_auth
from wit_world.imports import events as host_events
from wit_world.imports import outgoing_handler
from wit_world.imports import wasi_config_store as host_config
from wit_world.imports import wasi_keyvalue_store as host_kv
from wit_world.imports import wasi_http_types as http
from wit_world.imports import streams

MAX_LIMIT = 100
"""Most items one page may hold."""
DEFAULT_LIMIT = 20
"""Page size when neither the request nor the config (``default_page_size``) sets one."""

_METHODS = {
    http.Method_Get: "GET",
    http.Method_Head: "HEAD",
    http.Method_Post: "POST",
    http.Method_Put: "PUT",
    http.Method_Delete: "DELETE",
    http.Method_Connect: "CONNECT",
    http.Method_Options: "OPTIONS",
    http.Method_Trace: "TRACE",
    http.Method_Patch: "PATCH",
}


def _message(error):
    """The message of an exception, host errors (``Err(variant)``) included."""
    if isinstance(error, Err):
        value = error.value
        inner = getattr(value, "value", value)
        return inner if isinstance(inner, str) else type(value).__name__
    return str(error) or type(error).__name__


class Response:
    """A response, written whole after the handler returns."""

    def __init__(self, status, headers=None, body=b""):
        self.status = status
        self.headers = list(headers or [])
        self.body = body.encode() if isinstance(body, str) else bytes(body)

    @staticmethod
    def text(status, text):
        return Response(status, [("content-type", "text/plain; charset=utf-8")], text)

    @staticmethod
    def json(status, value):
        return Response(status, [("content-type", "application/json")], json.dumps(value))

    @staticmethod
    def problem(status, title, detail):
        """An RFC 9457 problem body: ``{type, title, status, detail}``."""
        body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
        return Response(status, [("content-type", "application/problem+json")], json.dumps(body))

    def with_header(self, name, value):
        self.headers.append((name, value))
        return self

    def header(self, name):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


class HttpError(Exception):
    """An error answered as its response (a 4xx is a value like any other)."""

    def __init__(self, response):
        try:
            detail = json.loads(response.body).get("detail")
        except (ValueError, AttributeError):
            detail = None
        super().__init__(detail or f"answered with status {response.status}")
        self.response = response

    @staticmethod
    def problem(status, title, detail):
        return HttpError(Response.problem(status, title, detail))

    @staticmethod
    def bad_request(detail):
        return HttpError.problem(400, "Bad Request", detail)

    @staticmethod
    def unauthorized(detail):
        return HttpError.problem(401, "Unauthorized", detail)

    @staticmethod
    def forbidden(detail):
        return HttpError.problem(403, "Forbidden", detail)

    @staticmethod
    def not_found(detail):
        return HttpError.problem(404, "Not Found", detail)

    @staticmethod
    def method_not_allowed(method, allow):
        """405 with the ``Allow`` header listing what the resource accepts."""
        response = Response.problem(
            405, "Method Not Allowed", f"method {json.dumps(method)} is not allowed here; allowed: {allow}"
        )
        return HttpError(response.with_header("allow", allow))

    @staticmethod
    def conflict(detail):
        return HttpError.problem(409, "Conflict", detail)

    @staticmethod
    def unprocessable(detail):
        return HttpError.problem(422, "Unprocessable Content", detail)


def _read_stream(body):
    """Everything an incoming body holds; the stream is dropped before the body."""
    chunks = []
    stream = body.stream()
    try:
        while True:
            try:
                chunks.append(stream.blocking_read(65536))
            except Err as e:
                if isinstance(e.value, streams.StreamError_Closed):
                    break
                raise
    finally:
        stream.__exit__(None, None, None)
    return b"".join(chunks)


class Request:
    """A request, read whole before the handler runs."""

    def __init__(self, method, path_with_query, headers, body):
        self.method = method
        parts = urlsplit(path_with_query)
        self.path = parts.path or "/"
        self.query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.headers = headers
        self.body = body

    @staticmethod
    def read(incoming):
        method = incoming.method()
        name = _METHODS.get(type(method)) or getattr(method, "value", "GET")
        headers = {}
        for key, value in incoming.headers().entries():
            headers.setdefault(key.lower(), value.decode("utf-8", "replace"))
        body = incoming.consume()
        try:
            data = _read_stream(body)
        finally:
            body.__exit__(None, None, None)
        return Request(name, incoming.path_with_query() or "/", headers, data)

    def header(self, name):
        return self.headers.get(name.lower())

    def query_param(self, name):
        return self.query.get(name)

    def segments(self):
        """The path's non-empty segments: ``/api/x/1`` → ``["api", "x", "1"]``."""
        return [s for s in self.path.split("/") if s]

    def text(self):
        return self.body.decode("utf-8")

    def json(self):
        """The body as JSON, or a 400 problem saying why it is not."""
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise HttpError.bad_request(f"the body is not valid JSON: {e}")

    def page(self):
        """The page a list route is asked for (``?limit=N&after=ID``); a bad limit is a 400."""
        return PageRequest.from_request(self)


class PageRequest:
    """What page a client asked for: ``limit`` (1 to MAX_LIMIT) and ``after`` (an id)."""

    def __init__(self, limit, after=None):
        self.limit = limit
        self.after = after

    @staticmethod
    def from_request(req):
        raw = req.query_param("limit")
        if raw is None:
            # A bad config value is the operator's, not the client's.
            fallback = config("default_page_size")
            limit = int(fallback) if fallback and fallback.isdigit() and int(fallback) >= 1 else DEFAULT_LIMIT
            limit = min(limit, MAX_LIMIT)
        else:
            if not (raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT):
                raise HttpError.bad_request(
                    f'query parameter "limit" must be a whole number from 1 to {MAX_LIMIT}, got {json.dumps(raw)}'
                )
            limit = int(raw)
        return PageRequest(limit, req.query_param("after") or None)

    def select(self, ids):
        """The page of ``ids`` (sorted ascending) this request selects: ``{items, next}``."""
        rest = [i for i in ids if i > (self.after or "")]
        items = rest[: self.limit]
        return {"items": items, "next": items[-1] if len(rest) > self.limit else None}


class Store:
    """The service's keyspace (``wasi:keyvalue``): writes commit only if the call succeeds."""

    def __init__(self, name="default"):
        try:
            self.bucket = host_kv.open(name)
        except Err as e:
            raise RuntimeError(f"opening bucket {name!r}: {_message(e)}")

    def _call(self, what, f, *args):
        try:
            return f(*args)
        except Err as e:
            raise RuntimeError(f"kv {what}: {_message(e)}")

    def get(self, key):
        return self._call("get", self.bucket.get, key)

    def set(self, key, value):
        self._call("set", self.bucket.set, key, value.encode() if isinstance(value, str) else bytes(value))

    def delete(self, key):
        self._call("delete", self.bucket.delete, key)

    def exists(self, key):
        return self._call("exists", self.bucket.exists, key)

    def get_json(self, key):
        raw = self.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as e:
            raise RuntimeError(f"stored value of {key!r} is not valid JSON: {e}")

    def set_json(self, key, value):
        self.set(key, json.dumps(value, separators=(",", ":")))

    def keys_with_prefix(self, prefix):
        """Every key that starts with ``prefix``, in byte order, following the store's cursor."""
        keys, cursor = [], None
        while True:
            page = self._call("list-keys", self.bucket.list_keys, cursor)
            keys.extend(k for k in page.keys if k.startswith(prefix))
            if page.cursor is None:
                return keys
            cursor = page.cursor

    def page_ids(self, prefix, page):
        """One page of the ids under ``prefix`` (the rest of each key): ``{items, next}``."""
        return page.select([k[len(prefix):] for k in self.keys_with_prefix(prefix)])

    def page_json(self, prefix, page):
        """One page of the JSON values under ``prefix``; ``next`` is the id of the last one."""
        ids = self.page_ids(prefix, page)
        items = [v for v in (self.get_json(prefix + i) for i in ids["items"]) if v is not None]
        return {"items": items, "next": ids["next"]}


class kv:
    """``kv.open(name="default")``: a bucket of the service's keyspace."""

    @staticmethod
    def open(name="default"):
        return Store(name)


class events:
    """Publishing events (``microhost:platform/events``): delivered only if the call succeeds."""

    @staticmethod
    def publish(topic, data, key=None, content_type=None):
        payload = data.encode() if isinstance(data, str) else bytes(data)
        try:
            return host_events.publish(topic, payload, host_events.PublishOptions(key, content_type))
        except Err as e:
            raise RuntimeError(f"publishing to {topic!r}: {_message(e)}")

    @staticmethod
    def publish_json(topic, key, value):
        return events.publish(topic, json.dumps(value), key, "application/json")


class auth:
    """Passwords and tokens, done by the host; and the identity the gateway verified."""

    @staticmethod
    def subject(req):
        """The verified subject of the request's token (clients cannot forge the header)."""
        return req.header("x-microhost-subject")

    @staticmethod
    def require_subject(req):
        """The verified subject, or a 401 problem."""
        subject = auth.subject(req)
        if not subject:
            raise HttpError.unauthorized("this route needs a token")
        return subject

    @staticmethod
    def claims(req):
        raw = req.header("x-microhost-claims")
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    @staticmethod
    def calling_service(req):
        """The service that made this request, when another service did."""
        return req.header("x-microhost-caller")

    @staticmethod
    def hash_password(password):
        try:
            return host_auth.hash_password(password)
        except Err as e:
            raise RuntimeError(f"hashing: {_message(e)}")

    @staticmethod
    def verify_password(password, hash):
        try:
            return host_auth.verify_password(password, hash)
        except Err as e:
            raise RuntimeError(f"verifying: {_message(e)}")

    @staticmethod
    def issue_token(subject, claims, ttl_seconds):
        try:
            return host_auth.issue_token(subject, json.dumps(claims or {}), ttl_seconds)
        except Err as e:
            raise RuntimeError(f"issuing a token: {_message(e)}")


class Reply:
    """A called service's answer."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())

    def json(self):
        return json.loads(self.body)


def call(service, method, path, body=b"", headers=None):
    """Calls another service (``http://<service>.internal<path>``); returns its ``Reply``.
    A refused or failed call raises ``RuntimeError``."""
    fields = http.Fields.from_list([(k, v.encode()) for k, v in (headers or {}).items()])
    request = http.OutgoingRequest(fields)
    verb = next((cls for cls, name in _METHODS.items() if name == method), None)
    request.set_method(verb() if verb else http.Method_Other(method))
    request.set_scheme(http.Scheme_Http())
    request.set_authority(f"{service}.internal")
    request.set_path_with_query(path)
    outgoing = request.body()
    stream = outgoing.write()
    data = body.encode() if isinstance(body, str) else bytes(body)
    for i in range(0, len(data), 4096):
        stream.blocking_write_and_flush(data[i : i + 4096])
    stream.__exit__(None, None, None)
    future = outgoing_handler.handle(request, None)
    http.OutgoingBody.finish(outgoing, None)
    while True:
        result = future.get()
        if result is not None:
            break
        pollable = future.subscribe()
        pollable.block()
        pollable.__exit__(None, None, None)
    future.__exit__(None, None, None)
    answer = result.value if isinstance(result, Ok) else None
    if not isinstance(answer, Ok):
        raise RuntimeError(f"calling {service}: {_message(answer) if answer else 'no answer'}")
    response = answer.value
    headers = {}
    for key, value in response.headers().entries():
        headers.setdefault(key.lower(), value.decode("utf-8", "replace"))
    incoming = response.consume()
    try:
        data = _read_stream(incoming)
    finally:
        incoming.__exit__(None, None, None)
    status = response.status()
    response.__exit__(None, None, None)
    return Reply(status, headers, data)


def config(key):
    """A configuration value from the manifest (``[service.config]``), or None."""
    try:
        return host_config.get(key)
    except Err:
        return None


def now_ms():
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def new_id():
    """A new id that sorts by creation time: 12 hex digits of milliseconds, 12 random."""
    return f"{now_ms() & 0xFFFFFFFFFFFF:012x}{os.urandom(6).hex()}"


class Event:
    """An event as a subscriber receives it, with its data as text and JSON."""

    def __init__(self, raw):
        self.id = raw.id
        self.source = raw.source
        self.topic = raw.topic
        self.time = raw.time
        self.offset = raw.offset
        self.key = raw.key
        self.content_type = raw.content_type
        self.traceparent = raw.traceparent
        self.data = raw.data
        self.attempt = raw.attempt

    def text(self):
        return self.data.decode("utf-8")

    def json(self):
        """The data parsed as JSON, or an error naming the topic."""
        try:
            return json.loads(self.data)
        except ValueError as e:
            raise RuntimeError(f"{self.topic} event is not valid JSON: {e}")


def _write(response, out):
    fields = http.Fields.from_list([(n, v.encode() if isinstance(v, str) else v) for n, v in response.headers])
    outgoing = http.OutgoingResponse(fields)
    outgoing.set_status_code(response.status)
    body = outgoing.body()
    http.ResponseOutparam.set(out, Ok(outgoing))
    stream = body.write()
    try:
        for i in range(0, len(response.body), 4096):
            stream.blocking_write_and_flush(response.body[i : i + 4096])
    except Err:
        pass  # The client went away: nobody is left to answer.
    finally:
        stream.__exit__(None, None, None)
    http.OutgoingBody.finish(body, None)


class Service:
    """A microhost service: register ``handler``, optionally ``on_event`` and ``health``,
    then export ``service.exports()`` as ``IncomingHandler, Subscriber, Lifecycle``."""

    def __init__(self):
        self._handle = None
        self._on_event = None
        self._health = None

    def handler(self, f):
        self._handle = f
        return f

    def on_event(self, f):
        self._on_event = f
        return f

    def health(self, f):
        self._health = f
        return f

    def _answer(self, incoming):
        try:
            req = Request.read(incoming)
        except Exception as e:  # noqa: BLE001 - every failure is an answer
            return Response.problem(400, "Bad Request", _message(e))
        try:
            if self._handle is None:
                raise HttpError.not_found("this service serves no HTTP routes")
            return self._handle(req)
        except HttpError as e:
            return e.response
        except Exception as e:  # noqa: BLE001
            return Response.problem(500, "Internal Server Error", f"{type(e).__name__}: {_message(e)}")

    def exports(self):
        service = self

        class IncomingHandler(exports.IncomingHandler):
            def handle(self, request, response_out):
                _write(service._answer(request), response_out)

        class Subscriber(exports.Subscriber):
            def handle(self, event):
                if service._on_event is None:
                    raise Err(f"this service does not handle events (got one from topic {event.topic!r})")
                try:
                    service._on_event(Event(event))
                except Exception as e:  # noqa: BLE001 - the host retries, then dead-letters
                    raise Err(f"{type(e).__name__}: {_message(e)}")

        class Lifecycle(exports.Lifecycle):
            def health(self):
                if service._health is None:
                    return
                try:
                    service._health()
                except Exception as e:  # noqa: BLE001
                    raise Err(_message(e))

        return IncomingHandler, Subscriber, Lifecycle
