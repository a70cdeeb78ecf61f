"""The analytics service: a CQRS read model of the order and user events.

- on ``order.created``, ``order.confirmed``, ``order.cancelled``, ``user.registered``:
  the counters, the revenue per day and the products ordered move on. Each event id is
  remembered in the same unit of work as its effects, so an event delivered twice (a
  retry, or ``microhost replay analytics <topic> --from 0``) counts once, and the model
  can be rebuilt from the logs.
- ``GET /api/analytics/summary`` (token): all-time figures
- ``GET /api/analytics/daily?limit=N&after=DAY``: orders and revenue per day (UTC)
- ``GET /api/analytics/top-products?limit=N``: products by quantity in confirmed orders
"""

from microhost import HttpError, Response, Service, auth, kv

service = Service()

SUMMARY = "summary"
FIELDS = (
    "orders_created",
    "orders_confirmed",
    "orders_cancelled",
    "revenue_cents",
    "users_registered",
)


def _summary(store):
    return store.get_json(SUMMARY) or {name: 0 for name in FIELDS}


def _day(event):
    """The UTC day of an event's time (RFC 3339): ``2026-12-02``."""
    return event.time[:10]


def _bump(store, key, field, by=1):
    value = store.get_json(key) or {}
    value[field] = value.get(field, 0) + by
    store.set_json(key, value)


def _count_products(store, order):
    for item in order.get("items", []):
        key = f"product/{item['product_id']}"
        _bump(store, key, "quantity", int(item.get("quantity", 0)))
        _bump(store, key, "orders")
    order["counted"] = True


@service.on_event
def on_event(event):
    store = kv.open()
    seen = f"seen/{event.id}"
    if store.exists(seen):
        return  # Applied already: a retry or a replay.
    data = event.json()
    order_id = data.get("order_id")
    summary = _summary(store)
    if event.topic == "user.registered":
        summary["users_registered"] += 1
    elif event.topic in ("order.created", "order.confirmed", "order.cancelled"):
        if not order_id:
            raise ValueError(f"{event.topic} event without order_id")
        # Topics are delivered independently: an order's confirmation may arrive before
        # its creation. The order's entry joins them.
        key = f"order/{order_id}"
        order = store.get_json(key) or {"status": "pending", "counted": False}
        day = f"day/{_day(event)}"
        if event.topic == "order.created":
            summary["orders_created"] += 1
            _bump(store, day, "orders_created")
            order["items"] = data.get("items", [])
            if order["status"] == "confirmed" and not order["counted"]:
                _count_products(store, order)
        elif event.topic == "order.confirmed":
            total = int(data.get("total_cents", 0))
            summary["orders_confirmed"] += 1
            summary["revenue_cents"] += total
            _bump(store, day, "orders_confirmed")
            _bump(store, day, "revenue_cents", total)
            order["status"] = "confirmed"
            if "items" in order and not order["counted"]:
                _count_products(store, order)
        else:
            summary["orders_cancelled"] += 1
            _bump(store, day, "orders_cancelled")
            order["status"] = "cancelled"
        store.set_json(key, order)
    else:
        raise ValueError(f"unexpected topic {event.topic!r}")
    store.set_json(SUMMARY, summary)
    store.set(seen, b"")


def summary(store):
    figures = _summary(store)
    decided = figures["orders_confirmed"] + figures["orders_cancelled"]
    figures["orders_pending"] = max(figures["orders_created"] - decided, 0)
    figures["conversion"] = (
        round(figures["orders_confirmed"] / figures["orders_created"], 4) if figures["orders_created"] else None
    )
    return figures


def daily(store, req):
    page = store.page_ids("day/", req.page())
    items = []
    for day in page["items"]:
        figures = store.get_json(f"day/{day}") or {}
        items.append(
            {
                "day": day,
                "orders_created": figures.get("orders_created", 0),
                "orders_confirmed": figures.get("orders_confirmed", 0),
                "orders_cancelled": figures.get("orders_cancelled", 0),
                "revenue_cents": figures.get("revenue_cents", 0),
            }
        )
    return {"items": items, "next": page["next"]}


def top_products(store, req):
    limit = req.page().limit
    products = []
    for key in store.keys_with_prefix("product/"):
        figures = store.get_json(key) or {}
        products.append(
            {
                "product_id": key[len("product/") :],
                "quantity": figures.get("quantity", 0),
                "orders": figures.get("orders", 0),
            }
        )
    products.sort(key=lambda p: (-p["quantity"], p["product_id"]))
    return {"items": products[:limit]}


ROUTES = {
    "summary": summary,
    "daily": daily,
    "top-products": top_products,
}


@service.handler
def handle(req):
    auth.require_subject(req)
    segments = req.segments()
    if len(segments) != 3 or segments[:2] != ["api", "analytics"] or segments[2] not in ROUTES:
        raise HttpError.not_found(f"no analytics resource at {req.path!r}")
    if req.method != "GET":
        raise HttpError.method_not_allowed(req.method, "GET")
    store = kv.open()
    view = ROUTES[segments[2]]
    body = view(store) if view is summary else view(store, req)
    return Response.json(200, body)


@service.health
def health():
    # The read model must be readable: a corrupt summary is a failing version.
    _summary(kv.open())


IncomingHandler, Subscriber, Lifecycle = service.exports()
