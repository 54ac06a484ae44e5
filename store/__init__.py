"""Persistence for mcpgw: the async ``Store`` and ``CredentialStore`` protocols, and their
SQLite implementation.

No HTTP and no MCP in here; ``gateway`` and ``api`` depend on this package, never the reverse.
Exceptions are documented in :mod:`store.errors`.
"""

from ._timestamps import format_timestamp, utc_now
from .coordination import Coordination, LocalCoordination
from .errors import (
    KeyFileError,
    KeyNotFound,
    OrganisationNotFound,
    SchemaVersionError,
    SealError,
    StoreError,
    StoreUnavailable,
    StoreUnreachable,
)
from .keyfile import KeyFile, add_current_key, drop_keys_except, load_or_create_keyring
from .keys import generate_api_key, hash_api_key
from .models import (
    TASK_PENDING,
    ApiKey,
    AuthFlow,
    AuthMode,
    Binding,
    CreatedKey,
    Credential,
    CredentialFilter,
    CredentialRow,
    CredentialStatus,
    Grant,
    InvocationRecord,
    IssuedToken,
    OAuthClient,
    Organisation,
    Page,
    PendingSignIn,
    RecordedInvocation,
    RecordedSession,
    RecordEvent,
    Seek,
    SessionEnd,
    SessionStart,
    SignedIn,
    SignInClient,
    SignInClientKind,
    SignInCode,
    TaskEnd,
)
from .opening import is_postgres_url, open_store
from .postgres import PostgresStore, open_postgres_store
from .protocol import CredentialStore, SignInStore, Store
from .sealing import FixedKeys, Keyring, Sealer, key_id_for
from .sqlite import SqliteStore, open_sqlite_store

__all__ = [
    "TASK_PENDING",
    "ApiKey",
    "AuthFlow",
    "AuthMode",
    "Binding",
    "Coordination",
    "CreatedKey",
    "Credential",
    "CredentialFilter",
    "CredentialRow",
    "CredentialStatus",
    "CredentialStore",
    "FixedKeys",
    "Grant",
    "InvocationRecord",
    "IssuedToken",
    "KeyFile",
    "KeyFileError",
    "KeyNotFound",
    "Keyring",
    "LocalCoordination",
    "OAuthClient",
    "Organisation",
    "OrganisationNotFound",
    "Page",
    "PendingSignIn",
    "PostgresStore",
    "RecordEvent",
    "RecordedInvocation",
    "RecordedSession",
    "SchemaVersionError",
    "SealError",
    "Sealer",
    "Seek",
    "SessionEnd",
    "SessionStart",
    "SignInClient",
    "SignInClientKind",
    "SignInCode",
    "SignInStore",
    "SignedIn",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoreUnreachable",
    "TaskEnd",
    "add_current_key",
    "drop_keys_except",
    "format_timestamp",
    "generate_api_key",
    "hash_api_key",
    "is_postgres_url",
    "key_id_for",
    "load_or_create_keyring",
    "open_postgres_store",
    "open_sqlite_store",
    "open_store",
    "utc_now",
]
