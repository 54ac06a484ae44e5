"""A schemathesis check for what a JSON Schema cannot say: a paging cursor must be one the server minted.

Loaded by the schemathesis runs of `test_openapi_conformance.py` (`SCHEMATHESIS_HOOKS`). It
replaces the built-in `positive_data_acceptance`, which demands that every schema-valid request
succeed: cursors are opaque and signed, so a schema-valid string the server never minted is
rightly refused (400 `Pagination.InvalidCursor` / `invalid_cursor`). Any other refusal of a
schema-valid request is still a failure: the document promised more than the server accepts.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis import Case, CheckContext, Response

_CURSOR_PARAMETERS = ("Cursor", "cursor")
_CURSOR_REFUSALS = ("Pagination.InvalidCursor", "invalid_cursor")
_REFUSALS_OF_VALID_DATA = {401, 403, 404, 405, 409}  # about who asks and what exists, not the data


def _refused_as_cursor(response: Response) -> bool:
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    error = body.get("error")
    code = error.get("code") if isinstance(error, dict) else body.get("title")
    return code in _CURSOR_REFUSALS


@schemathesis.check
def schema_valid_requests_are_accepted_unless_a_cursor_is_forged(
    ctx: CheckContext, response: Response, case: Case[Any]
) -> bool | None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status < 400 or status in _REFUSALS_OF_VALID_DATA or status >= 500:  # 5xx: not_a_server_error's
        return None
    forged = any((case.query or {}).get(name) for name in _CURSOR_PARAMETERS)
    if status == 400 and forged and _refused_as_cursor(response):
        return None
    raise AssertionError(f"A schema-valid request was refused with {status}: {response.text[:300]}")
