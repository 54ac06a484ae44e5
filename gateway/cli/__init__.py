"""The `mcpgw` command: serve, keys create|list|revoke, grants list|revoke, sessions [show ID],
secrets rotate|new-key, migrate, stdio; `mcpgw --version`.

Every subcommand takes `--config FILE` (default `$MCPGW_CONFIG`, then `./config.yaml`). A bad
config ends the command with one line per problem, naming the file, the key and the reason.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import anyio

from gateway.config import ConfigError, GatewayConfig, config_path_from, load_config

logger = logging.getLogger("mcpgw")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Request lines name URLs, which can carry session ids: keep the HTTP client's chatter out.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    try:
        if args.command == "secrets" and args.secrets_command == "new-key":
            print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="))
            return 0
        if args.command == "stdio":
            from gateway.cli.bridge import run_bridge

            return anyio.run(run_bridge, args.url, os.environ.get("MCPGW_API_KEY"))
        if args.command == "sessions" and args.show is None and args.session_id is not None:
            parser.error("to see one session, run: mcpgw sessions show ID")
        config = load_config(config_path_from(args.config))
        if args.command == "serve":
            from gateway.telemetry.logs import configure_logging

            configure_logging(args.log_level or config.logging.level, config.logging.format)
            return _serve(config, args.host, args.port)
        if args.command == "sessions":
            from gateway.cli.terminal import show_session, show_sessions

            if args.show is None:
                return anyio.run(show_sessions, config.store_at, args.limit or 20)
            if args.session_id is None:
                parser.error("sessions show needs a session ID")
            return anyio.run(show_session, config.store_at, args.session_id, args.limit or 100)
        if args.command == "secrets":
            return anyio.run(_rotate, config, args.drop_old)
        if args.command == "migrate":
            from gateway.cli.migrate import migrate

            return anyio.run(migrate, config, args.source)
        if args.command == "grants":
            from gateway.cli.grants import list_grants, revoke_grant

            if args.grants_command == "list":
                return anyio.run(list_grants, config.store_at, args.org, args.json)
            return anyio.run(revoke_grant, config.store_at, args.grant_id)
        if args.command == "keys":
            from gateway.cli.keys import create_key, list_keys, revoke_key

            if args.keys_command == "list":
                return anyio.run(list_keys, config.store_at, args.org, args.json)
            if args.keys_command == "revoke":
                return anyio.run(revoke_key, config.store_at, args.api_key_id)
            return anyio.run(
                create_key, config.store_at, args.org, args.user, args.admin, args.allow or ["*"], args.deny
            )
    except ConfigError as exc:
        print(f"mcpgw: {exc}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcpgw", description="A Model Context Protocol gateway.")
    parser.add_argument("--version", action="version", version=f"mcpgw {mcpgw_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    config_help = "config file (default: $MCPGW_CONFIG, then ./config.yaml)"

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help=config_help)
    serve.add_argument("--host", help="listen address (overrides listen.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    serve.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="overrides logging.level"
    )

    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create an API key and print it once, as JSON")
    create.add_argument("--config", help=config_help)
    create.add_argument("--org", required=True, help="organisation name (created if new)")
    create.add_argument("--user", help="bind the key to this user id")
    create.add_argument(
        "--admin", action="store_true", help="an admin key: lists every session of its organisation"
    )
    create.add_argument(
        "--allow",
        action="append",
        metavar="GLOB",
        help="only tools matching this (e.g. 'demo__*'); repeatable",
    )
    create.add_argument(
        "--deny", action="append", default=[], metavar="GLOB", help="never tools matching this"
    )
    listing = key_commands.add_parser(
        "list", help="an organisation's keys: id, user, admin, tool filters, created, last used, revoked"
    )
    listing.add_argument("--config", help=config_help)
    listing.add_argument("--org", required=True, help="organisation name")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    revoke = key_commands.add_parser(
        "revoke", help="revoke a key; a running gateway refuses it from its next request"
    )
    revoke.add_argument(
        "api_key_id", metavar="ID", help="the key's id (apiKeyId, the ID column of keys list)"
    )
    revoke.add_argument("--config", help=config_help)

    grants = commands.add_parser("grants", help="hosts' sign-ins (host_sign_in): list and revoke them")
    grant_commands = grants.add_subparsers(dest="grants_command", required=True)
    grant_list = grant_commands.add_parser(
        "list", help="an organisation's sign-ins: id, user, key, client, MCP URL, when, revoked"
    )
    grant_list.add_argument("--config", help=config_help)
    grant_list.add_argument("--org", required=True, help="organisation name")
    grant_list.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    grant_revoke = grant_commands.add_parser(
        "revoke", help="end a sign-in; a running gateway refuses its tokens from its next request"
    )
    grant_revoke.add_argument(
        "grant_id", metavar="ID", help="the sign-in's id (the ID column of grants list)"
    )
    grant_revoke.add_argument("--config", help=config_help)

    sessions = commands.add_parser("sessions", help="recent sessions, or one session's invocations")
    sessions.add_argument("show", nargs="?", choices=["show"], help="show one session's invocations")
    sessions.add_argument("session_id", nargs="?", metavar="ID", help="a session id from the list")
    sessions.add_argument("--config", help=config_help)
    sessions.add_argument("--limit", type=_positive, default=None, help="rows to show (20; 100 for show)")

    secrets_parser = commands.add_parser("secrets", help="the keys that encrypt stored credentials")
    secret_commands = secrets_parser.add_subparsers(dest="secrets_command", required=True)
    rotate = secret_commands.add_parser(
        "rotate", help="seal every stored secret under a new key (safe while the gateway runs)"
    )
    rotate.add_argument("--config", help=config_help)
    rotate.add_argument(
        "--drop-old", action="store_true", help="then remove old keys no stored value uses any more"
    )
    secret_commands.add_parser("new-key", help="print a new random key for secrets.key")

    migrate = commands.add_parser(
        "migrate", help="create the database's schema, or bring it up to this version (SQLite or PostgreSQL)"
    )
    migrate.add_argument("--config", help=config_help)
    migrate.add_argument(
        "--from",
        dest="source",
        metavar="sqlite:///PATH",
        help="copy everything from this SQLite database into the configured (empty) PostgreSQL one",
    )

    stdio = commands.add_parser("stdio", help="bridge a stdio-only MCP host to a gateway URL")
    stdio.add_argument("--config", help=config_help)
    stdio.add_argument("--url", required=True, help="the gateway's MCP URL, e.g. http://127.0.0.1:8080/mcp")
    return parser


def mcpgw_version() -> str:
    try:
        return version("mcpgw")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _serve(config: GatewayConfig, host: str | None, port: int | None) -> int:
    from gateway.cli.serve import serve
    from gateway.config import is_loopback_host

    listen_host = host or config.listen.host
    if not config.auth.required and not is_loopback_host(listen_host):
        print(
            f"mcpgw: {config.path}: auth.required is false, so the gateway only listens on loopback; "
            f"{listen_host!r} is not a loopback address",
            file=sys.stderr,
        )
        return 2
    from gateway.cli.migrate import check_database

    # Before anything listens: an unreachable server, a refused login or a schema from a newer
    # mcpgw is one line and a non-zero exit, not a traceback from the app's start-up.
    if (problem := anyio.run(check_database, config)) is not None:
        print(f"mcpgw: {problem}", file=sys.stderr)
        return 1
    return serve(config, listen_host, config.listen.port if port is None else port)


async def _rotate(config: GatewayConfig, drop_old: bool) -> int:
    """Re-seal under the current key: a new one added to the key file, or the config's own
    (after the operator moved the old one to secrets.previous_keys)."""
    from gateway.credentials.sealing import sealer_for
    from store import add_current_key, drop_keys_except, open_store

    from_file = config.secrets.key is None
    if from_file:
        sealer_for(config.secrets)  # creates the file if there is none yet
        add_current_key(config.secrets.key_file)
    sealer = sealer_for(config.secrets)
    async with open_store(config.store_at, sealer=sealer, pool_size=2) as store:
        resealed = await store.credentials.reseal()
        in_use = await store.credentials.key_ids_in_use()
    dropped: list[str] = []
    if drop_old and from_file:
        dropped = drop_keys_except(config.secrets.key_file, in_use)
    report = {
        "keyId": sealer.keyring.current,
        "resealed": resealed,
        "keysInUse": sorted(in_use),
        "dropped": dropped,
    }
    print(json.dumps(report))
    return 0
