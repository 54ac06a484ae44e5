"""Rules the running gateway applies that a config value states: which tools a filter lets
through, which hosts are this machine, and the URL of a gateway served on one of them."""

import ipaddress
from dataclasses import dataclass
from fnmatch import fnmatchcase

__all__ = ["ToolFilter", "is_loopback_host", "local_url"]


@dataclass(frozen=True, slots=True)
class ToolFilter:
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()

    def permits(self, name: str) -> bool:
        """True when some allow pattern matches `name` and no deny pattern does."""
        # fnmatchcase, not fnmatch: tool names are case-sensitive on every platform.
        return any(fnmatchcase(name, p) for p in self.allow) and not any(
            fnmatchcase(name, p) for p in self.deny
        )


def is_loopback_host(host: str) -> bool:
    bare = host.removeprefix("[").removesuffix("]")
    if bare.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def local_url(host: str, port: int) -> str:
    """The base URL of a gateway listening on `host`:`port`."""
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{host}:{port}"
