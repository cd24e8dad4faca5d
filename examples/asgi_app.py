"""An ASGI app (Starlette): every request shares one ktcluster.aio.Cluster.

Run it with uvicorn (``pip install 'ktcluster[asgi]'``)::

    python examples/asgi_app.py --listen 127.0.0.1:8080 kt1:1978 kt2:1978 kt3:1978

or under any ASGI server, the servers taken from ``KT_SERVERS``::

    KT_SERVERS=kt1:1978,kt2:1978 uvicorn --factory 'asgi_app:app_from_env'

The Cluster is made when the app starts (its lifespan) and closed when it stops; one
Cluster per process is the intended use: the pools, breakers and retry budget are shared
by all requests, which are tasks of one event loop.

Its endpoints are gevent_app.py's, and errors map to status codes as
examples/webapp.py says.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from webapp import arguments, http_error

from ktcluster import KT_PACKER_BYTES
from ktcluster.aio import Cluster
from ktcluster.errors import KyotoTycoonException


def make_app(make_cluster: Callable[[], Cluster]) -> Starlette:
    """The ASGI app serving the cluster ``make_cluster()`` makes when the app starts."""
    cluster: Cluster

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal cluster
        cluster = make_cluster()
        async with cluster:
            yield

    async def kv(request: Request) -> Response:
        key = request.path_params["key"]
        if request.method == "GET":
            value = await cluster.get(key)
            return Response(status_code=404) if value is None else Response(value)
        if request.method == "PUT":
            await cluster.set(key, await request.body())
            return Response(status_code=204)
        return Response(status_code=204 if await cluster.remove(key) else 404)

    async def incr(request: Request) -> Response:
        value = await cluster.increment(request.path_params["key"], int(request.query_params.get("by", "1")))
        return PlainTextResponse(str(value))

    async def bulk(request: Request) -> Response:
        if request.method == "POST":
            records = await request.json()
            return JSONResponse({"stored": await cluster.set_bulk({k: v.encode() for k, v in records.items()})})
        found = await cluster.get_bulk(request.query_params.getlist("key"))
        return JSONResponse({k: v.decode() for k, v in found.items()})

    async def health(request: Request) -> Response:
        return JSONResponse({"down": cluster.health.down(),
                             "nodes": {n: cluster.health[n].state.value for n in cluster.nodes}})

    async def ktcluster_error(request: Request, exc: Exception) -> Response:
        mapped = http_error(exc)
        if mapped is None:
            raise exc
        status, body, headers = mapped
        return JSONResponse(body, status, dict(headers))

    routes = [Route("/kv/{key:path}", kv, methods=["GET", "PUT", "DELETE"]),
              Route("/incr/{key:path}", incr, methods=["POST"]),
              Route("/bulk", bulk, methods=["GET", "POST"]),
              Route("/health", health)]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={KyotoTycoonException: ktcluster_error})


def app_from_env() -> Starlette:
    """For ``uvicorn --factory``: the servers come from ``KT_SERVERS`` (comma-separated host:port)."""
    servers = [s for s in os.environ.get("KT_SERVERS", "127.0.0.1:1978").split(",") if s]
    return make_app(lambda: Cluster(servers, pack_type=KT_PACKER_BYTES))


def main(argv: list[str] | None = None) -> None:
    host, port, servers, options = arguments((__doc__ or "").splitlines()[0], argv)
    uvicorn.run(make_app(lambda: Cluster(servers, **options)), host=host, port=port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
