// A real headless browser for the console tests: Debian's chromium (CHROMIUM, else
// /usr/bin/chromium) driven by playwright-core. It serves POST / on a loopback port: the body
// names a scenario and its inputs, the answer is what the browser saw, as JSON. Every scenario
// runs in a fresh browser context with JavaScript off: the console must work without it.
// It prints {"listening": true, "port": N} once the browser is up (tests/node.py run_node).
import http from "node:http";
import { chromium } from "playwright-core";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // As root (CI containers) chromium refuses to start sandboxed.
  args: ["--no-sandbox"],
});

async function signIn(page, base, key) {
  await page.goto(`${base}/admin/`);
  await page.fill("#api_key", key);
  await Promise.all([page.waitForURL("**/admin/sessions"), page.click("button:text('Sign in')")]);
}

async function cells(page, selector) {
  return page.$$eval(selector, (rows) =>
    rows.map((row) => Array.from(row.querySelectorAll("td")).map((td) => td.textContent.trim())),
  );
}

const scenarios = {
  async signin(page, plan, context) {
    await signIn(page, plan.base, plan.key);
    const [cookie] = (await context.cookies()).filter((c) => c.name === "mcpgw_console");
    return {
      url: page.url(),
      heading: await page.textContent("h1"),
      cookie: { httpOnly: cookie.httpOnly, sameSite: cookie.sameSite, path: cookie.path },
    };
  },

  async find_session(page, plan) {
    await signIn(page, plan.base, plan.key);
    await page.fill("input[name=user]", plan.user);
    await Promise.all([page.waitForURL("**/admin/sessions?**"), page.click("button:text('Filter')")]);
    const rows = await cells(page, "table tbody tr");
    if (plan.screenshots) await page.screenshot({ path: `${plan.screenshots}/console-sessions.png`, fullPage: true });
    await Promise.all([page.waitForURL("**/admin/sessions/*"), page.click("table tbody tr:first-child a")]);
    const summary = page.locator("summary", { hasText: plan.tool }).first();
    const before = await page.locator("pre.arguments").first().isVisible();
    await summary.click();
    const details = page.locator("details", { has: summary });
    const argumentsText = await details.locator("pre.arguments").innerText();
    const visible = await details.locator("pre.arguments").isVisible();
    if (plan.screenshots) await page.screenshot({ path: `${plan.screenshots}/console-timeline.png`, fullPage: true });
    return { rows, argumentsText, hiddenBefore: !before, visible };
  },

  async revoke_key(page, plan) {
    await signIn(page, plan.base, plan.key);
    await page.goto(`${plan.base}/admin/keys`);
    await page.click(`#key-${plan.keyId} a:text('Revoke')`);
    const question = await page.textContent("h1");
    await Promise.all([page.waitForURL("**/admin/keys"), page.click("button.danger")]);
    return { question, row: (await cells(page, `#key-${plan.keyId}`))[0] };
  },

  async reauth(page, plan) {
    await signIn(page, plan.base, plan.key);
    await page.goto(`${plan.base}/admin/credentials`);
    const status = await page.textContent(`#credential-${plan.credentialId} .badge`);
    await page.click(`#credential-${plan.credentialId} a:text('Re-authorise')`);
    await page.click("button.danger");
    await page.waitForSelector("a.reauth-link");
    return { status, link: await page.getAttribute("a.reauth-link", "href"), heading: await page.textContent("h1") };
  },

  async provider_signin(page, plan) {
    // The console's "Sign in with" button, then the provider's own pages (login, consent: plain
    // forms), until the browser is back in the console or stops somewhere else.
    await page.goto(`${plan.base}/admin/signin`);
    await page.click(`button:text('Sign in with ${plan.label}')`);
    for (let step = 0; step < 8 && !page.url().startsWith(`${plan.base}/admin/`); step++) {
      if (page.url().startsWith(`${plan.base}/signin/oidc/callback`)) {
        await page.waitForURL(`${plan.base}/admin/**`, { timeout: 5000 }).catch(() => {});
        break;
      }
      if (await page.locator("input[name=login]").count()) {
        await page.fill("input[name=login]", plan.login);
        await page.fill("input[name=password]", "any password will do");
      }
      await Promise.all([page.waitForLoadState("load"), page.locator("button[type=submit]").first().click()]);
    }
    return { url: page.url(), heading: await page.textContent("h1"), text: await page.textContent("main") };
  },

  async csrf(page, plan) {
    await signIn(page, plan.base, plan.key);
    const url = `${plan.base}/admin/keys/${plan.keyId}/revoke`;
    // The page's own request context carries the console cookie: only the token is missing.
    const bare = await page.request.post(url, { form: {}, maxRedirects: 0 });
    const forged = await page.request.post(url, { form: { csrf: "forged" }, maxRedirects: 0 });
    await page.goto(`${plan.base}/admin/keys`);
    return { bare: bare.status(), forged: forged.status(), row: (await cells(page, `#key-${plan.keyId}`))[0] };
  },
};

const server = http.createServer(async (request, response) => {
  let body = "";
  for await (const chunk of request) body += chunk;
  const plan = JSON.parse(body);
  const context = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(plan.timeoutMs || 20000);
  let status = 200;
  let answer;
  try {
    answer = await scenarios[plan.scenario](page, plan, context);
  } catch (error) {
    status = 500;
    answer = { error: String(error && error.stack ? error.stack : error), url: page.url() };
  } finally {
    await context.close();
  }
  response.writeHead(status, { "content-type": "application/json" });
  response.end(JSON.stringify(answer));
});

async function stop() {
  server.close();
  await browser.close();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

server.listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ listening: true, port: server.address().port }));
});
