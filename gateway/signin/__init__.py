"""Hosts that sign in: the gateway as the OAuth 2.1 authorization server for its own MCP URL.

`resource.py` (the MCP URL as a protected resource: RFC 9728), `clients.py` and `documents.py`
(clients: configured, RFC 7591, metadata documents), `provider.py` (what the `mcp` SDK's OAuth
handlers call), `consent.py` (the consent page, where every sign-in method ends in
`Consents.complete_sign_in`), `tokens.py` (the secrets handed out), `server.py` (all of it as the
running gateway holds it) and `routes.py` (its routes).

Nothing here is imported by `gateway/host/` except `tokens.py` (which holds no other import), so
host authentication can tell an access token from a key without loading the rest.
"""
