"""test-py with a health check that fails: a version the health gate must refuse."""

import app


@app.service.health
def health():
    raise RuntimeError("this version is unhealthy, on purpose")


IncomingHandler, Subscriber, Lifecycle = app.IncomingHandler, app.Subscriber, app.Lifecycle
