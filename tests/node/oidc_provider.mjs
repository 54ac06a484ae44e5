// A real OpenID Connect provider for the tests: the certified `oidc-provider` package, on
// 127.0.0.1, with its development interactions (a login form that takes any password, then a
// consent form), which a test completes over HTTP as a browser would.
//
//   node oidc_provider.mjs '<json>'
//
// The JSON (every key optional):
//   port       the port to listen on (0, the default: an ephemeral one)
//   issuer     the issuer (default http://127.0.0.1:<port>)
//   clients    [{client_id, client_secret, redirect_uris}]: confidential clients
//   accounts   {"<login>": {email, email_verified, name, groups, org}}: who can sign in; the
//              login typed on the form is the account's `sub`
//
// Each instance signs with an RSA key of its own, made at start, so two instances never accept
// each other's tokens. Once listening it prints one line of JSON to stdout:
//   {"listening": true, "issuer": "...", "port": N}

import crypto from "node:crypto";
import http from "node:http";

import Provider from "oidc-provider";

const options = JSON.parse(process.argv[2] ?? "{}");
const accounts = options.accounts ?? {};

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once("error", reject);
  server.listen(options.port ?? 0, "127.0.0.1", resolve);
});
const { port } = server.address();
const issuer = options.issuer ?? `http://127.0.0.1:${port}`;

const { privateKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: "jwk" }),
  kid: crypto.randomUUID(),
  alg: "RS256",
  use: "sig",
};

const provider = new Provider(issuer, {
  clients: (options.clients ?? []).map((client) => ({
    client_id: client.client_id,
    client_secret: client.client_secret,
    redirect_uris: client.redirect_uris,
    response_types: ["code"],
    grant_types: ["authorization_code"],
    token_endpoint_auth_method: client.token_endpoint_auth_method ?? "client_secret_basic",
  })),
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString("base64url")] },
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name"],
    groups: ["groups", "org"],
  },
  // Put the scopes' claims in the id_token itself (as Google, Entra ID and Okta's org server
  // do), not only behind the userinfo endpoint.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  async findAccount(_ctx, sub) {
    const account = accounts[sub];
    if (account === undefined) {
      return undefined;
    }
    return {
      accountId: sub,
      async claims() {
        return { sub, ...account };
      },
    };
  },
});
// The dev interactions and an http issuer are for tests only; say nothing about them on stdout.
provider.on("server_error", (_ctx, error) => console.error("oidc-provider server_error:", error));

server.on("request", provider.callback());
process.stdout.write(`${JSON.stringify({ listening: true, issuer, port })}\n`);

const stop = () => server.close(() => process.exit(0));
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
