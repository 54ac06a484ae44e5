"""Run a gateway in a process of its own: `python -m tests.gateway_process --fd N CONFIG`.

The same app, loop and HTTP parser as `mcpgw serve` (uvicorn's auto choice: uvloop and
httptools), served on a listening socket the test bound and passed down as file descriptor N.
For tests that must see the gateway alone: its memory (RSS) without the test's, and a crash
that ends the gateway, not the test run. `tests.harness.start_gateway_process` starts it.
"""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

import uvicorn

from gateway.app import build_app
from gateway.config import load_config
from gateway.host.limits import protocol_for


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.gateway_process")
    parser.add_argument("--fd", type=int, required=True, help="a listening socket inherited from the parent")
    parser.add_argument("config", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = socket.socket(fileno=args.fd)
    config = load_config(args.config)
    http = protocol_for(config.security)  # the request limits `mcpgw serve` runs under
    server = uvicorn.Server(
        uvicorn.Config(build_app(config), log_level="warning", lifespan="on", access_log=False, http=http)
    )
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
