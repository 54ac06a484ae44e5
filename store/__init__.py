"""Persistence for mcpgw: an async ``Store`` Protocol and its SQLite implementation.

No HTTP and no MCP in here; ``gateway`` and ``api`` depend on this package, never the reverse.
Exceptions are documented in :mod:`store.errors`.
"""

from ._credentials import CredentialSql
from ._timestamps import format_timestamp, utc_now
from .errors import (
    KeyNotFound,
    OrganisationNotFound,
    SchemaVersionError,
    StoreError,
    StoreUnavailable,
)
from .keyfile import KeyFile, KeyFileError, add_current_key, drop_keys_except, load_or_create_keyring
from .keys import generate_api_key, hash_api_key
from .models import (
    ApiKey,
    AuthFlow,
    AuthMode,
    Binding,
    CreatedKey,
    Credential,
    CredentialFilter,
    CredentialRow,
    CredentialStatus,
    InvocationRecord,
    OAuthClient,
    Organisation,
    Page,
    RecordedInvocation,
    RecordedSession,
    RecordEvent,
    Seek,
    SessionEnd,
    SessionStart,
)
from .protocol import Store
from .sealing import FixedKeys, Keyring, Sealer, SealError, key_id_for
from .sqlite import SqliteStore, open_sqlite_store

__all__ = [
    "ApiKey",
    "AuthFlow",
    "AuthMode",
    "Binding",
    "CreatedKey",
    "Credential",
    "CredentialFilter",
    "CredentialRow",
    "CredentialSql",
    "CredentialStatus",
    "FixedKeys",
    "InvocationRecord",
    "KeyFile",
    "KeyFileError",
    "KeyNotFound",
    "Keyring",
    "OAuthClient",
    "Organisation",
    "OrganisationNotFound",
    "Page",
    "RecordEvent",
    "RecordedInvocation",
    "RecordedSession",
    "SchemaVersionError",
    "SealError",
    "Sealer",
    "Seek",
    "SessionEnd",
    "SessionStart",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "add_current_key",
    "drop_keys_except",
    "format_timestamp",
    "generate_api_key",
    "hash_api_key",
    "key_id_for",
    "load_or_create_keyring",
    "open_sqlite_store",
    "utc_now",
]
