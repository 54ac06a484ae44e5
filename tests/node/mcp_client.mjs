// An MCP host as the TypeScript SDK builds one, signing in with the SDK's own OAuth client.
//
// The test drives it over stdio, one JSON object per line each way, and plays the browser: the
// script prints where the SDK sends the user agent ({"event": "authorize", "url": ...}), the test
// completes the gateway's consent page and answers with the redirect it got back
// ({"op": "callback", "url": ...}). It prints {"listening": true} first (tests/node.py waits for
// it). Commands:
//   {"op": "connect"}                      -> {"event": "connected", "sessionId": ...}
//   {"op": "list_tools"}                   -> {"event": "tools", "names": [...]}
//   {"op": "call", "name": ..., "arguments": {...}} -> {"event": "result", "result": {...}}
//   {"op": "tokens"}                       -> {"event": "tokens", "tokens": ..., "client": ..., "authorizations": n}
//   {"op": "spoil"}                        -> {"event": "spoiled"}: the access token kept is no longer
//                                             one the gateway issued, as after its expiry
//   {"op": "close"}                        -> {"event": "closed"}, then exit
// Any failure is {"event": "error", "op": ..., "message": ..., "code": ...}.
// argv[2] is a JSON object: {"url": MCP URL, "redirectUrl": ..., "clientMetadataUrl"?: ...,
// "clientName"?: ...}.
import { createInterface } from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const options = JSON.parse(process.argv[2]);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

async function nextCommand() {
  const { value, done } = await lines.next();
  if (done) return { op: "close" };
  return JSON.parse(value);
}

// Everything the SDK asks a host application to keep, kept in memory for this one run.
class MemoryProvider {
  constructor() {
    this.saved = { client: undefined, tokens: undefined, verifier: undefined };
    this.authorizations = 0;
    if (options.clientMetadataUrl) this.clientMetadataUrl = options.clientMetadataUrl;
  }
  get redirectUrl() {
    return options.redirectUrl;
  }
  get clientMetadata() {
    return {
      client_name: options.clientName ?? "mcpgw TypeScript SDK test host",
      redirect_uris: [options.redirectUrl],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  clientInformation() {
    return this.saved.client;
  }
  saveClientInformation(information) {
    this.saved.client = information;
  }
  tokens() {
    return this.saved.tokens;
  }
  saveTokens(tokens) {
    this.saved.tokens = tokens;
  }
  redirectToAuthorization(url) {
    this.authorizations += 1;
    emit({ event: "authorize", url: url.toString() });
  }
  saveCodeVerifier(verifier) {
    this.saved.verifier = verifier;
  }
  codeVerifier() {
    return this.saved.verifier;
  }
  invalidateCredentials(scope) {
    if (scope === "all" || scope === "client") this.saved.client = undefined;
    if (scope === "all" || scope === "tokens") this.saved.tokens = undefined;
    if (scope === "all" || scope === "verifier") this.saved.verifier = undefined;
  }
}

const provider = new MemoryProvider();
let client;
let transport;

function newTransport() {
  return new StreamableHTTPClientTransport(new URL(options.url), { authProvider: provider });
}

// The user agent went to the authorization URL the SDK printed; the test answers with where the
// gateway sent it back, and the SDK trades the code for tokens.
async function finishSignIn() {
  const command = await nextCommand();
  if (command.op !== "callback") throw new Error(`expected a callback, got ${command.op}`);
  const code = new URL(command.url).searchParams.get("code");
  if (!code) throw new Error(`the redirect carries no code: ${command.url}`);
  await transport.finishAuth(code);
}

// Connects, signing in through the browser (the test) when the gateway asks for it.
async function connect() {
  for (let attempt = 0; attempt < 3; attempt++) {
    client = new Client({ name: "mcpgw-ts-test-host", version: "1.0.0" });
    transport = newTransport();
    try {
      await client.connect(transport);
      return;
    } catch (error) {
      if (!(error instanceof UnauthorizedError)) throw error;
    }
    await finishSignIn();
  }
  throw new Error("still unauthorised after signing in three times");
}

// A request made after the tokens stopped working: the SDK refreshes them by itself; when it
// cannot (the grant was revoked), it sends the user to sign in again, and the request is made
// again on a new connection.
async function withSignIn(action) {
  try {
    return await action();
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) throw error;
  }
  await finishSignIn();
  await connect();
  return await action();
}

async function run() {
  emit({ listening: true });
  for (;;) {
    const command = await nextCommand();
    try {
      switch (command.op) {
        case "connect":
          await connect();
          emit({ event: "connected", sessionId: transport.sessionId ?? null });
          break;
        case "list_tools": {
          const listed = await withSignIn(() => client.listTools());
          emit({ event: "tools", names: listed.tools.map((tool) => tool.name) });
          break;
        }
        case "call": {
          const result = await withSignIn(() =>
            client.callTool({ name: command.name, arguments: command.arguments ?? {} }),
          );
          emit({ event: "result", result });
          break;
        }
        case "tokens":
          emit({
            event: "tokens",
            tokens: provider.saved.tokens ?? null,
            client: provider.saved.client ?? null,
            authorizations: provider.authorizations,
          });
          break;
        case "spoil":
          provider.saved.tokens = { ...provider.saved.tokens, access_token: "mga_no-longer-valid" };
          emit({ event: "spoiled" });
          break;
        case "close":
          if (client) await client.close();
          emit({ event: "closed" });
          return;
        default:
          emit({ event: "error", op: command.op, message: `unknown op ${command.op}` });
      }
    } catch (error) {
      emit({ event: "error", op: command.op, message: String(error?.message ?? error), code: error?.code ?? null });
    }
  }
}

run().then(
  () => process.exit(0),
  (error) => {
    emit({ event: "error", op: "run", message: String(error?.stack ?? error) });
    process.exit(1);
  },
);
