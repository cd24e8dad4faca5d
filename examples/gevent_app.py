"""A gevent WSGI app: every request shares one ktcluster.Cluster.

Run it with gevent's own server::

    python examples/gevent_app.py --listen 127.0.0.1:8080 kt1:1978 kt2:1978 kt3:1978

or under gunicorn's gevent worker (which monkey-patches before loading the app)::

    KT_SERVERS=kt1:1978,kt2:1978 gunicorn -k gevent -w 2 'gevent_app:app_from_env()'

The Cluster is created after ``monkey.patch_all()``, so its pools block greenlets,
and its bulk calls fan out as greenlets.  One Cluster per process is the intended
use: the pools, breakers and retry budget are shared by all requests.

Endpoints (values are raw bytes)::

    GET    /kv/<key>             200 value | 404
    PUT    /kv/<key>             204 (body = value)
    DELETE /kv/<key>             204 | 404
    POST   /incr/<key>?by=N      200 new value
    POST   /bulk                 200 {"stored": n}   (body: JSON object key -> text value)
    GET    /bulk?key=a&key=b     200 {key: value} of the keys found
    GET    /health               200 {"down": [...], "nodes": {name: breaker state}}
    GET    /stats                200 cluster.stats() (JSON; ``ktcluster stats --watch --url`` reads it)
    GET    /metrics              200 the Prometheus exposition (needs ``ktcluster[prometheus]``)

The Cluster has a :class:`~ktcluster.observe.Metrics` observer: per node x operation
counts, latency and pool-wait histograms and errors by class, served at ``/stats`` and, in
Prometheus' format, at ``/metrics`` (docs/observability.md).

Errors map to status codes as examples/webapp.py says (the body is
``{"error": message}``; 503 with Retry-After for local pool congestion).

Accepted connections get TCP_NODELAY: gevent.pywsgi writes a response's head and body in
two sends, and with Nagle's algorithm on, the body of every response on a keep-alive
connection would wait for the client's delayed ACK (~40 ms).
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from http import HTTPStatus  # noqa: E402
from urllib.parse import parse_qs, unquote  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402
from webapp import arguments, http_error  # noqa: E402

from ktcluster import KT_PACKER_BYTES  # noqa: E402
from ktcluster.cluster import Cluster  # noqa: E402
from ktcluster.errors import KyotoTycoonException  # noqa: E402
from ktcluster.observe import Metrics  # noqa: E402

Environ = dict
StartResponse = Callable[..., object]


def _reply(start: StartResponse, status: str, body: bytes = b"", ctype: str = "application/octet-stream",
           headers: Iterable[tuple[str, str]] = ()) -> Iterable[bytes]:
    start(status, [("Content-Type", ctype), ("Content-Length", str(len(body))), *headers])
    return [body]


def _json(start: StartResponse, status: str, obj: object, headers: Iterable[tuple[str, str]] = ()
          ) -> Iterable[bytes]:
    return _reply(start, status, json.dumps(obj).encode(), "application/json", headers)


def prometheus_exposition(cluster: Cluster) -> Callable[[], tuple[bytes, str]] | None:
    """A function returning ``(body, content type)`` of a scrape, or None without prometheus_client."""
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from ktcluster.observe.prometheus import Collector
    except ImportError:
        return None
    registry = CollectorRegistry()
    registry.register(Collector(cluster))
    return lambda: (generate_latest(registry), CONTENT_TYPE_LATEST)


def make_app(cluster: Cluster) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """The WSGI callable serving ``cluster``."""
    scrape = prometheus_exposition(cluster)

    def app(environ: Environ, start: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            if path.startswith("/kv/"):
                key = unquote(path[4:])
                if method == "GET":
                    value = cluster.get(key)
                    return _reply(start, "404 Not Found") if value is None else _reply(start, "200 OK", value)
                if method == "PUT":
                    size = int(environ.get("CONTENT_LENGTH") or 0)
                    cluster.set(key, environ["wsgi.input"].read(size))
                    return _reply(start, "204 No Content")
                if method == "DELETE":
                    return _reply(start, "204 No Content" if cluster.remove(key) else "404 Not Found")
            elif path.startswith("/incr/") and method == "POST":
                value = cluster.increment(unquote(path[6:]), int(query.get("by", ["1"])[0]))
                return _reply(start, "200 OK", str(value).encode(), "text/plain")
            elif path == "/bulk" and method == "POST":
                size = int(environ.get("CONTENT_LENGTH") or 0)
                records = json.loads(environ["wsgi.input"].read(size))
                stored = cluster.set_bulk({k: v.encode() for k, v in records.items()})
                return _json(start, "200 OK", {"stored": stored})
            elif path == "/bulk" and method == "GET":
                found = cluster.get_bulk(query.get("key", []))
                return _json(start, "200 OK", {k: v.decode() for k, v in found.items()})
            elif path == "/health":
                return _json(start, "200 OK", {"down": cluster.health.down(),
                                               "nodes": {n: cluster.health[n].state.value for n in cluster.nodes}})
            elif path == "/stats":
                return _json(start, "200 OK", cluster.stats())
            elif path == "/metrics" and scrape is not None:
                body, ctype = scrape()
                return _reply(start, "200 OK", body, ctype)
            return _reply(start, "404 Not Found")
        except KyotoTycoonException as exc:
            mapped = http_error(exc)
            if mapped is None:
                raise
            status, body, headers = mapped
            return _json(start, f"{status} {HTTPStatus(status).phrase}", body, headers)

    return app


class NoDelayWSGIServer(WSGIServer):
    """gevent's WSGI server with Nagle's algorithm off on every accepted connection."""

    def handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


def app_from_env() -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """For gunicorn: the servers come from ``KT_SERVERS`` (comma-separated host:port)."""
    servers = [s for s in os.environ.get("KT_SERVERS", "127.0.0.1:1978").split(",") if s]
    return make_app(Cluster(servers, pack_type=KT_PACKER_BYTES, observer=Metrics()))


def main(argv: list[str] | None = None) -> None:
    host, port, servers, options = arguments(__doc__.splitlines()[0], argv)
    cluster = Cluster(servers, observer=Metrics(), **options)
    server = NoDelayWSGIServer((host, port), make_app(cluster), log=None)
    gevent.signal_handler(signal.SIGTERM, server.stop, 1)
    try:
        server.serve_forever()
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
