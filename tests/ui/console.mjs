// Drives the node's web console in Debian's headless Chromium through playwright-core
// (started by tests/tests/ui.rs, which owns the node, the receiver and the SMTP client).
//
// Environment: MXNODE_URL (https://127.0.0.1:PORT), SETUP_TOKEN, RECEIVER_URL, RECEIVER_SECRET,
// RECEIVER_CA (a file on the node's host), TLS_CHAIN, TLS_KEY, TLS_WRONG_KEY (PEM text of the
// certificate to upload), TLS_FINGERPRINT (its SHA-256), S3_ENDPOINT, S3_ACCESS_KEY,
// S3_SECRET_KEY (an s3s-fs with bucket "mail"), RECOVERY_KEY (the key the node holds in its
// data_dir, shown once after login), UPDATE_CHANNEL (the node's update channel, serving
// 9.0.0), UPDATE_BAD_BUNDLE (a bundle file whose signature does not verify), RUNNING_VERSION,
// ARTIFACTS (a directory for screenshots and the browser profile), CHROMIUM (default
// /usr/bin/chromium). When the script needs a real email, it prints "SEND_MAIL" on stdout and
// waits for one line on stdin; after installing the certificate it prints "CERT_INSTALLED",
// after the S3 probe "PROBED", after applying the staged update "APPLIED", and waits likewise
// for the test's own checks.
//
// The walk also changes the admin's password on the Account page and logs out everywhere else
// (ending a second session it holds through its own API request context).
//
// Exit status 0 when every step passed; otherwise the failing step is printed on stderr.

import { chromium, request } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env("MXNODE_URL");
const artifacts = env("ARTIFACTS");
const PASSWORD = "correct horse battery staple";
const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();

let step = "start";
let shot = 0;
async function snap(page, name) {
  shot += 1;
  await page.screenshot({ path: join(artifacts, `${String(shot).padStart(2, "0")}-${name}.png`), fullPage: true });
}
function check(condition, what) {
  if (!condition) throw new Error(`${step}: ${what}`);
}

const context = await chromium.launchPersistentContext(mkdtempSync(join(artifacts, "profile-")), {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  ignoreHTTPSErrors: true,
  viewport: { width: 1100, height: 800 },
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const violations = [];
const page = context.pages()[0] || (await context.newPage());
try {
  page.setDefaultTimeout(20_000);
  page.on("dialog", (dialog) => dialog.accept());
  // Script errors and CSP violations ("Refused to …") fail the walk; the 4xx answers this walk
// provokes on purpose (and the browser's favicon request) are logged as failed loads.
page.on("console", (msg) => {
  if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) violations.push(msg.text());
});
  page.on("pageerror", (err) => violations.push(String(err)));

  step = "setup page";
  const response = await page.goto(base + "/");
  const csp = response.headers()["content-security-policy"] || "";
  check(csp.includes("default-src 'self'") && !csp.includes("unsafe-inline"), `CSP: ${csp}`);
  await page.waitForSelector("#setup");
  await snap(page, "setup");

  step = "setup refused without the token";
  await page.fill("#setup-token", "not-the-token");
  await page.fill("#setup-password", PASSWORD);
  await page.click("#setup button[type=submit]");
  await page.waitForSelector("#setup-error:has-text('wrong setup token')");
  await snap(page, "setup-wrong-token");

  step = "setup field errors";
  await page.fill("#setup-token", env("SETUP_TOKEN"));
  await page.fill("#setup-password", "short");
  await page.click("#setup button[type=submit]");
  await page.waitForSelector("#setup .field-error[data-field=password]:has-text('at least 12')");

  step = "setup with the token";
  await page.fill("#setup-password", PASSWORD);
  await page.click("#setup button[type=submit]");
  await page.waitForSelector("#login");
  await snap(page, "login");

  step = "wrong password";
  await page.fill("#login-username", "admin");
  await page.fill("#login-password", "not the password");
  await page.click("#login button[type=submit]");
  await page.waitForSelector("#login-error:has-text('wrong user name or password')");

  step = "login shows the recovery key once";
  await page.fill("#login-password", PASSWORD);
  await page.click("#login button[type=submit]");
  await page.waitForSelector("#recovery-key");
  check((await page.textContent("#recovery-key")) === env("RECOVERY_KEY"), "the recovery key shown");
  check(await page.isDisabled("#recovery-confirm"), "confirming needs the checkbox");
  await snap(page, "recovery-key");
  await page.check("#recovery-stored");
  await page.click("#recovery-confirm");

  step = "status";
  await page.waitForSelector("#version");
  await page.waitForSelector("#certificate dd.mono");
  check(/used of .* available to the node/.test(await page.textContent("#disk")), "disk use of data_dir");
  check((await page.textContent("#volume")) === "unknown (not an appliance image)", "volume state off the appliance");
  // Issue 16: the node trusts only the test's freshly generated release key.
  check((await page.textContent("#development-keys")).startsWith("no:"), "development keys: no");
  check((await page.$("#development-keys-warning")) === null, "no development-key warning");
  check(/\(in \d+ days\)/.test(await page.textContent("#cert-expiry")), "certificate expiry");
  await snap(page, "status");

  step = "TLS certificate page";
  await page.click("nav a[href='#tls']");
  await page.waitForSelector("#current-certificate");
  await snap(page, "tls");

  step = "TLS upload with a key that does not match";
  await page.fill("#tls-certificate", env("TLS_CHAIN"));
  await page.fill("#tls-key", env("TLS_WRONG_KEY"));
  await page.click("#tls button[type=submit]");
  await page.waitForSelector("#tls .field-error[data-field=key]:has-text('does not belong to the certificate')");
  await snap(page, "tls-key-mismatch");

  step = "TLS upload";
  await page.fill("#tls-key", env("TLS_KEY"));
  await page.click("#tls button[type=submit]");
  await page.waitForSelector("#tls-done:has-text('Installed')");
  const served = await page.textContent("#current-certificate dd[data-fingerprint]");
  check(served.trim() === env("TLS_FINGERPRINT"), `fingerprint shown ${served}`);
  check((await page.textContent("#current-certificate")).includes("2 certificate(s)"), "chain of two");
  check(!(await page.textContent("main")).includes("PRIVATE KEY"), "the key is not shown back");
  await snap(page, "tls-installed");
  process.stdout.write("CERT_INSTALLED\n");
  check((await lines.next()).value === "CHECKED", "the test's TLS check");

  step = "add a route";
  await page.click("nav a[href='#routes']");
  await page.waitForSelector("#route");
  await page.click("#generate-secret");
  const shown = await page.textContent("#secret-once .once");
  check(/^whsec_[A-Za-z0-9+/=]{32}$/.test(shown.trim()), `generated secret ${shown}`);
  await snap(page, "routes-secret-shown-once");
  // A bad URL first: the settings API's field error appears under the field.
  await page.fill("#route-match", "*@in.example.test");
  await page.fill("#route-webhook", "ftp://nowhere");
  await page.click("#route button[type=submit]");
  await page.waitForSelector("#route .field-error[data-field=webhook]:not(:empty)");
  await snap(page, "routes-field-error");
  await page.fill("#route-webhook", env("RECEIVER_URL"));
  await page.fill("#route-webhook_secret", env("RECEIVER_SECRET"));
  await page.fill("#route-webhook_ca", env("RECEIVER_CA"));
  await page.click("#route button[type=submit]");
  await page.waitForSelector("#routes td:has-text('*@in.example.test')");
  await snap(page, "routes");

  step = "send test delivery";
  await page.click("#routes button[data-test='0']");
  await page.waitForSelector("#test-result:has-text('Test delivery accepted')");
  await snap(page, "routes-test-delivery");

  step = "DMARC enforcement per route (issue 15)";
  await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/api/v1/settings") && r.request().method() === "PUT" && r.ok()),
    page.selectOption("select[data-dmarc='0']", "enforce"),
  ]);
  // Saved through the settings API: a fresh visit of the page shows it from the node.
  await page.click("nav a[href='#compliance']");
  await page.waitForSelector("main:has-text('DMARC enforced')");
  await page.click("nav a[href='#routes']");
  await page.waitForSelector("select[data-dmarc='0']");
  check((await page.inputValue("select[data-dmarc='0']")) === "enforce", "the route enforces DMARC");
  await snap(page, "routes-dmarc-enforce");
  // Back to report: the rest of the walk sends mail with no resolver that answers.
  await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/api/v1/settings") && r.request().method() === "PUT" && r.ok()),
    page.selectOption("select[data-dmarc='0']", "report"),
  ]);
  await page.click("nav a[href='#compliance']");
  await page.waitForSelector("main:has-text('DMARC reported only')");
  await page.click("nav a[href='#routes']");
  await page.waitForSelector("select[data-dmarc='0']");
  check((await page.inputValue("select[data-dmarc='0']")) === "report", "the route reports DMARC only");

  step = "S3 connection";
  await page.click("nav a[href='#s3']");
  await page.waitForSelector("#s3");
  await page.fill("#s3-name", "primary");
  await page.fill("#s3-endpoint", env("S3_ENDPOINT"));
  await page.fill("#s3-bucket", "Not_A_Bucket!");
  await page.fill("#s3-access_key_id", env("S3_ACCESS_KEY"));
  await page.fill("#s3-secret_access_key", env("S3_SECRET_KEY"));
  await page.click("#s3 button[type=submit]");
  await page.waitForSelector("#s3 .field-error[data-field=bucket]:not(:empty)");
  await snap(page, "s3-field-error");
  await page.fill("#s3-bucket", "mail");
  await page.click("#s3 button[type=submit]");
  await page.waitForSelector("#s3-connections td:has-text('primary')");
  check((await page.textContent("main")).indexOf(env("S3_SECRET_KEY")) < 0, "the secret is not shown back");
  await snap(page, "s3");

  step = "S3 probe";
  await page.click("button[data-probe=primary]");
  await page.waitForSelector("#probe-result.ok:has-text('Probe passed')");
  await snap(page, "s3-probe");
  process.stdout.write("PROBED\n");
  check((await lines.next()).value === "CHECKED", "the test's S3 check");

  step = "S3 edit keeps the secret";
  await page.click("button[data-edit=primary]");
  await page.waitForSelector("#s3[data-editing=primary]");
  check((await page.inputValue("#s3-secret_access_key")) === "", "the secret field starts empty");
  check((await page.inputValue("#s3-bucket")) === "mail", "the form holds the connection");
  await page.fill("#s3-prefix", "console");
  await page.click("#s3 button[type=submit]");
  await page.waitForSelector("#s3:not([data-editing])");
  await page.click("button[data-probe=primary]");
  await page.waitForSelector("#probe-result.ok:has-text('Probe passed')");

  step = "S3 probe with a wrong secret";
  await page.click("button[data-edit=primary]");
  await page.waitForSelector("#s3[data-editing=primary]");
  check((await page.inputValue("#s3-prefix")) === "console", "the edited prefix was saved");
  await page.fill("#s3-secret_access_key", "not-the-secret-key");
  await page.click("#s3 button[type=submit]");
  await page.waitForSelector("#s3:not([data-editing])");
  await page.click("button[data-probe=primary]");
  await page.waitForSelector("#probe-result.error:has-text('Probe failed')");
  await snap(page, "s3-probe-failed");

  step = "S3 delete";
  await page.click("button[data-delete=primary]");
  await page.waitForSelector("#no-s3");

  step = "a real email";
  process.stdout.write("SEND_MAIL\n");
  const answer = await lines.next();
  check(answer.value === "SENT", `the test answered ${answer.value}`);

  step = "delivery log";
  await page.click("nav a[href='#log']");
  await page.waitForSelector("#records td:has-text('Console test')");
  await snap(page, "delivery-log");
  await page.click("#records button.danger");
  await page.waitForSelector("#no-records");
  await snap(page, "delivery-log-after-delete");

  step = "audit log";
  await page.click("nav a[href='#audit']");
  for (const action of ["setup.complete", "login", "settings.update", "email.delete", "login.failed", "tls.update", "s3.probe", "recovery_key.show", "recovery_key.delete"]) {
    await page.waitForSelector(`#audit td:text-is('${action}')`);
  }
  await snap(page, "audit");

  step = "API keys";
  await page.click("nav a[href='#keys']");
  await page.waitForSelector("#key");
  await page.fill("#key-name", "ci reader");
  await page.check("input[name=scope][value='emails:read']");
  await page.click("#key button[type=submit]");
  const key = await page.textContent("#new-key");
  check(/^mxk_[0-9a-f]{16}_[0-9a-f]{64}$/.test(key.trim()), `new key ${key}`);
  await snap(page, "keys-created");
  await page.click("#keys button.danger");
  await page.waitForFunction(() => !document.querySelector("#keys td") );
  await snap(page, "keys-revoked");

  step = "retention";
  await page.click("nav a[href='#retention']");
  await page.waitForSelector("#retention");
  await page.fill("#retention-metadata", "soon");
  await page.click("#retention button[type=submit]");
  await page.waitForSelector("#retention .field-error[data-field=metadata]:not(:empty)");
  await snap(page, "retention-field-error");
  await page.fill("#retention-metadata", "48h");
  await page.click("#retention button[type=submit]");
  await page.waitForSelector("#retention .ok");

  step = "compliance report";
  await page.click("nav a[href='#compliance']");
  await page.waitForSelector("#retention-metadata:text-is('48h')");
  check((await page.textContent("#luks")) === "unknown (not an appliance image)", "LUKS state off the appliance");
  check((await page.textContent("#compliance-development-keys")).startsWith("no:"), "compliance: development keys no");
  await snap(page, "compliance");
  await page.emulateMedia({ media: "print" });
  await snap(page, "compliance-print");
  await page.emulateMedia({ media: "screen" });

  step = "updates page";
  await page.click("nav a[href='#update']");
  await page.waitForSelector("#update-facts");
  check((await page.textContent("#update-version")) === env("RUNNING_VERSION"), "running version");
  check((await page.textContent("#update-channel")) === env("UPDATE_CHANNEL"), "channel");
  check((await page.textContent("#update-floor")) === env("RUNNING_VERSION"), "floor raised by finish");
  check((await page.textContent("#update-last-check")) === "never", "no check yet");
  check((await page.textContent("#update-available")) === "none", "nothing available yet");
  check((await page.textContent("#update-blessed")).startsWith("not an A/B boot"), "blessed off the appliance");
  await page.waitForSelector(`#update-history td:text-is('installed')`);
  await snap(page, "update");

  step = "update check needs the CSRF token";
  const refusedCheck = await page.evaluate(async () => {
    const res = await fetch("/api/v1/update/check", { method: "POST" });
    return [res.status, (await res.json()).error.code];
  });
  check(refusedCheck[0] === 403 && refusedCheck[1] === "csrf", `without the token: ${refusedCheck}`);

  step = "update check now";
  await page.click("#update-check");
  await page.waitForSelector("#update-result.ok:has-text('9.0.0 is verified and staged')");
  check((await page.textContent("#update-available")) === "9.0.0", "available release");
  await page.waitForSelector("#update-state[data-state=staged]");
  check((await page.textContent("#update-last-check")) !== "never", "last check shown");
  check(/(\d+\.\d) MiB of \1 MiB \(100 %\)/.test(await page.textContent("#update-progress")), `progress: ${await page.textContent("#update-progress")}`);
  await snap(page, "update-staged");

  step = "update apply";
  await page.click("#update-apply");
  await page.waitForSelector("#update-state[data-state=requested]");
  await page.waitForSelector("#update-result.ok:has-text('the installer writes it')");
  process.stdout.write("APPLIED\n");
  check((await lines.next()).value === "CHECKED", "the test's request check");
  await snap(page, "update-requested");

  step = "update upload without a file";
  await page.click("#update-upload button[type=submit]");
  await page.waitForSelector("#update-upload-result.error:has-text('Choose a bundle file')");

  step = "update upload with a bad signature";
  await page.setInputFiles("#update-file", env("UPDATE_BAD_BUNDLE"));
  await page.click("#update-upload button[type=submit]");
  await page.waitForSelector("#update-upload-result.error:has-text('refused: bad signature')");
  check((await page.textContent("#update-upload-result")).includes("(bad_signature)"), "the refusal's code");
  await page.waitForSelector("#update-last-error:has-text('bad signature')");
  // The release requested before is still in place: the refusal does not replace it.
  check((await page.getAttribute("#update-state", "data-state")) === "requested", "state stays requested");
  await snap(page, "update-upload-refused");

  step = "narrow screen";
  await page.setViewportSize({ width: 380, height: 760 });
  await page.click("nav a[href='#log']");
  await page.waitForSelector("#filters");
  await snap(page, "narrow-delivery-log");
  for (const [view, selector] of [["tls", "#tls"], ["s3", "#s3"], ["update", "#update-upload"]]) {
    await page.click(`nav a[href='#${view}']`);
    await page.waitForSelector(selector);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `the ${view} page fits a narrow screen (${overflow}px too wide)`);
    await snap(page, `narrow-${view}`);
  }
  await page.setViewportSize({ width: 1100, height: 800 });

  // Issue 16: the admin's own account page. A second session (another "device", an API
  // request context with its own cookie jar) is ended by the password change and again by
  // "log out everywhere else", while this page's session goes on.
  step = "account: a second session";
  const NEW_PASSWORD = "a much longer new passphrase";
  const other = await request.newContext({ baseURL: base, ignoreHTTPSErrors: true });
  const otherLogin = async (password) => {
    const res = await other.post("/api/v1/session", { data: { username: "admin", password } });
    check(res.status() === 201, `the second login answered ${res.status()}`);
  };
  const otherStatus = async () => (await other.get("/api/v1/session")).status();
  await otherLogin(PASSWORD);
  check((await otherStatus()) === 200, "the second session works");

  step = "account: wrong current password";
  await page.click("nav a[href='#account']");
  await page.waitForSelector("#password");
  await page.fill("#password-current_password", "not the current password");
  await page.fill("#password-new_password", NEW_PASSWORD);
  await page.click("#password button[type=submit]");
  await page.waitForSelector("#password-error:has-text('current password is wrong')");
  check((await otherStatus()) === 200, "a refused change ends nothing");

  step = "account: change the password";
  await page.fill("#password-current_password", PASSWORD);
  await page.fill("#password-new_password", NEW_PASSWORD);
  await page.click("#password button[type=submit]");
  await page.waitForSelector("#account-notice:has-text('Password changed. 1 other session ended.')");
  check((await otherStatus()) === 401, "the password change ended the other session");
  await snap(page, "account-password-changed");

  step = "account: log out everywhere else";
  await otherLogin(NEW_PASSWORD);
  await page.click("#end-sessions");
  await page.waitForSelector("#account-notice:has-text('1 other session ended.')");
  check((await otherStatus()) === 401, "log out everywhere ended the other session");
  await page.click("nav a[href='#status']");
  await page.waitForSelector("#version");
  await other.dispose();

  step = "logout";
  await page.click("#logout");
  await page.waitForSelector("#login");
  const status = await page.evaluate(async () => (await fetch("/api/v1/emails")).status);
  check(status === 401, `after logout the API answered ${status}`);

  step = "no script errors";
  check(violations.length === 0, `console errors: ${violations.join(" | ")}`);
  console.log("UI_OK");
} catch (err) {
  console.error(`failed at step "${step}": ${err.stack || err}`);
  console.error(`page text: ${await page.textContent("main").catch(() => "?")}`);
  await snap(page, "failure").catch(() => {});
  process.exitCode = 1;
} finally {
  await context.close();
  stdin.close();
}
