"""A local OTLP/HTTP receiver for `bench/run.py --tracing`: accepts every export (traces and
metrics) and discards it, counting spans so the run can say they arrived.

Prints ``READY http://127.0.0.1:<port>`` once it listens. What the traced gateway pays is its
own CPU: building spans, the SDK's batch queue, protobuf encoding and the HTTP posts of its
export thread; this process's CPU is not counted in the gateway's column.
"""

from __future__ import annotations

import argparse
import socket

import anyio
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_seen = {"spans": 0, "exports": 0}


async def _traces(request: Request) -> Response:
    body = ExportTraceServiceRequest.FromString(await request.body())
    _seen["exports"] += 1
    _seen["spans"] += sum(len(s.spans) for r in body.resource_spans for s in r.scope_spans)
    return Response(b"", media_type="application/x-protobuf")


async def _metrics(request: Request) -> Response:
    await request.body()
    return Response(b"", media_type="application/x-protobuf")


async def _seen_route(request: Request) -> JSONResponse:
    return JSONResponse(_seen)


async def _serve(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    app = Starlette(
        routes=[
            Route("/v1/traces", _traces, methods=["POST"]),
            Route("/v1/metrics", _metrics, methods=["POST"]),
            Route("/seen", _seen_route),
        ]
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    print(f"READY http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await server.serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    anyio.run(_serve, parser.parse_args().port)


if __name__ == "__main__":
    main()
