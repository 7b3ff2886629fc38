// The node's web console: setup, login and the admin pages, as vanilla JavaScript over the
// node's own REST API (DESIGN §7). Served by the node itself; nothing is loaded from elsewhere.
// Every value from the API reaches the page through textContent, never as HTML.
"use strict";

/** The session's CSRF token, sent as X-CSRF-Token with every state change. */
let csrf = null;

/** `h("p", {class: "x"}, "text", child)`: an element; strings become text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/**
 * Calls the API; throws an Error with `status`, `code` and `fields` on a non-2xx answer.
 * A Blob (a chosen file) is sent as it is, read from disk by the browser as it goes out;
 * anything else as JSON.
 */
async function api(method, path, body) {
  const headers = {};
  const raw = body instanceof Blob;
  if (body !== undefined) headers["Content-Type"] = raw ? "application/x-tar" : "application/json";
  if (csrf && method !== "GET") headers["X-CSRF-Token"] = csrf;
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : raw ? body : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!res.ok) {
    const error = (data && data.error) || {};
    const err = new Error(error.message || `the node answered ${res.status}`);
    err.status = res.status;
    err.code = error.code;
    err.fields = error.fields || [];
    throw err;
  }
  return data;
}

function show(...children) {
  const main = document.getElementById("main");
  main.replaceChildren(...children);
}

/** A form whose inputs show field errors below themselves. `fields`: [name, label, attrs]. */
function form(id, title, fields, submitLabel, onSubmit) {
  const status = h("p", { class: "error", role: "alert", id: `${id}-error` });
  const el = h("form", { id, novalidate: true },
    fields.map(([name, label, attrs]) => {
      const input = attrs && attrs.type === "select"
        ? h("select", { id: `${id}-${name}`, name }, (attrs.options || []).map((o) => h("option", { value: o }, o || "any")))
        : attrs && attrs.type === "textarea"
          ? h("textarea", Object.assign({ id: `${id}-${name}`, name, rows: 8, spellcheck: "false" }, attrs, { type: undefined }))
          : h("input", Object.assign({ id: `${id}-${name}`, name, type: "text" }, attrs || {}));
      return h("div", {}, h("label", { for: `${id}-${name}` }, label), input,
        h("div", { class: "field-error", "data-field": name }));
    }),
    h("button", { type: "submit" }, submitLabel), status);
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "";
    el.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
    const values = Object.fromEntries(new FormData(el).entries());
    try {
      await onSubmit(values, el);
    } catch (err) {
      status.textContent = err.message;
      for (const f of err.fields || []) {
        // Settings keys look like "route[2].webhook" or "retention.metadata": match the last part.
        const name = String(f.key).split(".").pop();
        const slot = el.querySelector(`.field-error[data-field="${CSS.escape(name)}"]`);
        if (slot) slot.textContent = f.message;
        else status.append(h("div", {}, `${f.key}: ${f.message}`));
      }
    }
  });
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, el);
}

// ---------------------------------------------------------------- setup and login

function setupView() {
  document.getElementById("nav").hidden = true;
  show(
    h("h1", {}, "Set up this node"),
    h("p", {}, "Enter the one-time setup token shown on the node's console (and in ",
      h("span", { class: "mono" }, "/run/mxnode/setup-token"),
      "), then choose the admin account. Check that the certificate fingerprint your browser shows matches the one on the console."),
    form("setup", null, [
      ["token", "Setup token", { autocomplete: "off", required: true }],
      ["username", "Admin user name", { autocomplete: "username", value: "admin" }],
      ["password", "Password (at least 12 characters)", { type: "password", autocomplete: "new-password" }],
    ], "Create admin", async (v) => {
      await api("POST", "/api/v1/setup", { token: v.token.trim(), username: v.username, password: v.password });
      loginView("Setup is complete. Log in with the account you just created.");
    }),
  );
}

function loginView(notice) {
  document.getElementById("nav").hidden = true;
  csrf = null;
  recoveryChecked = false;
  show(
    h("h1", {}, "Log in"),
    notice ? h("p", { class: "ok", id: "notice" }, notice) : null,
    form("login", null, [
      ["username", "User name", { autocomplete: "username" }],
      ["password", "Password", { type: "password", autocomplete: "current-password" }],
    ], "Log in", async (v) => {
      const session = await api("POST", "/api/v1/session", { username: v.username, password: v.password });
      csrf = session.csrf_token;
      location.hash = "#status";
      route();
    }),
  );
}

// ---------------------------------------------------------------- console pages

function duration(seconds) {
  const d = Math.floor(seconds / 86400), hrs = Math.floor((seconds % 86400) / 3600), m = Math.floor((seconds % 3600) / 60);
  return d > 0 ? `${d} d ${hrs} h` : hrs > 0 ? `${hrs} h ${m} min` : `${m} min ${seconds % 60} s`;
}

async function statusView() {
  const [status, session] = await Promise.all([api("GET", "/api/v1/status"), api("GET", "/api/v1/session")]);
  const tls = status.tls;
  show(
    h("h1", {}, "Node status"),
    status.development_keys ? h("p", { class: "error", role: "alert", id: "development-keys-warning" },
      "This node trusts the development release key, whose private half is public: anyone can sign a release it installs. Use an image built with ./build.sh image --production.") : null,
    h("section", { class: "card" }, h("dl", { class: "facts" },
      h("dt", {}, "Version"), h("dd", { id: "version" }, status.version),
      h("dt", {}, "Development keys"), h("dd", { id: "development-keys", class: status.development_keys ? "error" : "" },
        developmentKeysText(status.development_keys)),
      h("dt", {}, "Uptime"), h("dd", {}, duration(status.uptime_seconds)),
      h("dt", {}, "Metadata store on disk"), h("dd", {}, `${(status.store_size_bytes / 1048576).toFixed(1)} MiB`),
      h("dt", {}, "Data file system"), h("dd", { id: "disk" }, status.disk === null ? "unknown" :
        `${gib(status.disk.used_bytes)} used of ${gib(status.disk.total_bytes)}; ${gib(status.disk.available_bytes)} available to the node (${Math.round(100 * status.disk.used_bytes / Math.max(status.disk.total_bytes, 1))} % used)`),
      h("dt", {}, "Data volume"), h("dd", { id: "volume" }, volumeText(status.volume)),
      h("dt", {}, "Certificate expires"), h("dd", { id: "cert-expiry", class: tls && tls.days_left < 30 ? "error" : "" },
        tls === null ? "no TLS" : `${tls.not_after} (in ${tls.days_left} days)`),
      h("dt", {}, "Logged in as"), h("dd", {}, session.username),
      h("dt", {}, "Session ends"), h("dd", {}, session.expires_at),
    )),
    h("section", { class: "card" }, h("h2", {}, "TLS certificate (this console)"),
      tls === null ? h("p", { class: "muted" }, "Plain HTTP on a loopback address: no certificate.") :
        h("dl", { class: "facts", id: "certificate" },
          h("dt", {}, "Subject"), h("dd", {}, tls.subject),
          h("dt", {}, "Issuer"), h("dd", {}, tls.issuer),
          h("dt", {}, "Expires"), h("dd", { class: tls.days_left < 30 ? "error" : "" }, `${tls.not_after} (${tls.days_left} days)`),
          h("dt", {}, "SHA-256 fingerprint"), h("dd", { class: "mono" }, tls.sha256_fingerprint)),
      h("p", {}, h("a", { href: "#tls" }, "Replace the certificate"), " (no restart needed).")),
  );
}

/** The facts of a certificate as a definition list. */
function certificateFacts(c, id) {
  return h("dl", { class: "facts", id },
    h("dt", {}, "Subject"), h("dd", {}, c.subject),
    h("dt", {}, "Issuer"), h("dd", {}, c.issuer),
    h("dt", {}, "Names (SANs)"), h("dd", { class: "mono" }, c.sans.length ? c.sans.join(", ") : "none"),
    h("dt", {}, "Valid from"), h("dd", {}, c.not_before),
    h("dt", {}, "Expires"), h("dd", { class: c.days_left < 30 ? "error" : "" }, `${c.not_after} (${c.days_left} days)`),
    h("dt", {}, "Chain"), h("dd", {}, `${c.chain_length} certificate(s)`),
    h("dt", {}, "SHA-256 fingerprint"), h("dd", { class: "mono", "data-fingerprint": "" }, c.sha256_fingerprint));
}

async function tlsView() {
  const state = await api("GET", "/api/v1/tls");
  const used = state.used_by.map((l) => (l === "smtp" ? "SMTP STARTTLS" : "HTTPS (this console and the API)")).join(" and ");
  const done = h("p", { class: "ok", id: "tls-done", role: "status" });
  const f = form("tls", "Upload a certificate", [
    ["certificate", "Certificate chain (PEM: the server certificate first, then each issuer)", { type: "textarea", placeholder: "-----BEGIN CERTIFICATE-----" }],
    ["key", "Private key (PEM, not encrypted; stored readable by the node only, never shown again)", { type: "textarea", placeholder: "-----BEGIN PRIVATE KEY-----", autocomplete: "off" }],
  ], "Install certificate", async (v, el) => {
    const next = await api("PUT", "/api/v1/tls", { certificate: v.certificate, key: v.key });
    el.reset();
    await tlsView();
    document.getElementById("tls-done").textContent =
      `Installed: new connections get ${next.certificate.subject} (SHA-256 ${next.certificate.sha256_fingerprint}).`;
  });
  // PEM files can also be picked from disk; they are read in the browser into the fields.
  for (const name of ["certificate", "key"]) {
    const area = f.querySelector(`#tls-${name}`);
    area.after(h("input", { type: "file", accept: ".pem,.crt,.key,.txt", "aria-label": `${name} file`, onchange: async (event) => {
      const file = event.target.files[0];
      if (file) area.value = await file.text();
    } }));
  }
  show(
    h("h1", {}, "TLS certificate"),
    h("section", { class: "card" }, h("h2", {}, "In use"),
      state.certificate === null ? h("p", { class: "muted" }, "No listener uses TLS: configure smtp.tls_cert or an HTTPS http.listen.") :
        [certificateFacts(state.certificate, "current-certificate"),
          h("p", { class: "muted" }, `Served by ${used}; `,
            state.source === "uploaded" ? "uploaded through this console." : "from the configuration file's tls_cert/tls_key.")],
      done),
    state.used_by.length ? f : null,
  );
}

async function s3View(editing) {
  const settings = await api("GET", "/api/v1/settings");
  const connections = settings.s3 || {};
  const names = Object.keys(connections).sort();
  const result = h("p", { id: "probe-result", role: "status" });
  const current = editing ? connections[editing] || {} : {};
  const save = async (next) => {
    await api("PUT", "/api/v1/settings", { s3: next });
    await s3View();
  };
  const f = form("s3", editing ? `Edit connection "${editing}"` : "Add a connection", [
    ["name", "Name (used by routes as s3 = \"name\")", { value: editing || "", placeholder: "primary" }],
    ["endpoint", "Endpoint (https://host[:port])", { type: "url", value: current.endpoint || "" }],
    ["bucket", "Bucket", { value: current.bucket || "" }],
    ["region", "Region", { value: current.region || "", placeholder: "us-east-1 (default)" }],
    ["access_key_id", "Access key id", { value: current.access_key_id || "", autocomplete: "off" }],
    ["secret_access_key", "Secret access key (write-only)", { type: "password", autocomplete: "new-password",
      placeholder: editing ? "unchanged unless you type a new one" : "" }],
    ["path_style", "Path-style addressing (host/bucket/key; false: bucket.host/key)", { type: "select", options: ["true", "false"] }],
    ["prefix", "Key prefix (optional)", { value: current.prefix || "" }],
    ["ca", "Extra CA bundle file on the node (optional)", { value: current.ca || "" }],
  ], editing ? "Save connection" : "Add connection", async (v) => {
    const name = v.name.trim();
    const connection = { endpoint: v.endpoint, bucket: v.bucket, access_key_id: v.access_key_id, path_style: v.path_style === "true" };
    if (v.region) connection.region = v.region;
    if (v.prefix) connection.prefix = v.prefix;
    if (v.ca) connection.ca = v.ca;
    // An empty secret keeps the stored one (the API treats a missing secret so).
    if (v.secret_access_key) connection.secret_access_key = v.secret_access_key;
    const next = Object.assign({}, connections);
    if (editing && editing !== name) delete next[editing];
    next[name] = connection;
    await save(next);
  });
  f.querySelector("select").value = current.path_style === false ? "false" : "true";
  if (editing) f.querySelector("form").dataset.editing = editing;
  show(
    h("h1", {}, "S3 connections"),
    h("section", { class: "card" },
      names.length === 0 ? h("p", { class: "muted", id: "no-s3" }, "No S3 connections: routes deliver attachments inline.") :
        h("div", { class: "table-wrap" }, h("table", { id: "s3-connections" },
          h("tr", {}, h("th", {}, "Name"), h("th", {}, "Endpoint"), h("th", {}, "Bucket"), h("th", {}, "Secret"), h("th", {}, "")),
          names.map((name) => {
            const c = connections[name];
            return h("tr", {},
              h("td", { class: "mono" }, name), h("td", { class: "mono" }, c.endpoint || ""),
              h("td", { class: "mono" }, c.bucket || ""), h("td", {}, c.secret_access_key ? "set" : "not set"),
              h("td", {},
                h("button", { type: "button", class: "secondary", "data-probe": name, onclick: async () => {
                  result.className = "";
                  result.textContent = `Probing ${name}: write, read back, delete…`;
                  try {
                    const answer = await api("POST", `/api/v1/settings/s3/${encodeURIComponent(name)}/probe`);
                    result.className = answer.ok ? "ok" : "error";
                    result.textContent = answer.ok ? `Probe passed: ${answer.detail}` : `Probe failed: ${answer.detail}`;
                  } catch (err) { result.className = "error"; result.textContent = err.message; }
                } }, "Probe"), " ",
                h("button", { type: "button", class: "secondary", "data-edit": name, onclick: () => s3View(name) }, "Edit"), " ",
                h("button", { type: "button", class: "danger", "data-delete": name, onclick: async () => {
                  if (!confirm(`Delete the S3 connection ${name}?`)) return;
                  const next = Object.assign({}, connections);
                  delete next[name];
                  try { await save(next); } catch (err) {
                    result.className = "error";
                    result.textContent = [err.message].concat((err.fields || []).map((e) => `${e.key}: ${e.message}`)).join("; ");
                  }
                } }, "Delete")));
          }))),
      result),
    f,
  );
}

function gib(bytes) {
  return bytes >= 1073741824 ? `${(bytes / 1073741824).toFixed(1)} GiB` : `${(bytes / 1048576).toFixed(0)} MiB`;
}

/** The data volume's encryption in words; unknown off the appliance. */
function volumeText(v) {
  if (v === null) return "unknown (not an appliance image)";
  const protector = { tpm2: "sealed in the TPM 2.0 (PCR 7)", keyfile: "key file on the state partition (no TPM)" }[v.protector] || v.protector;
  const unlocked = { tpm2: "the TPM", keyfile: "the key file", "recovery-key": "the recovery key" }[v.unlocked_by] || v.unlocked_by;
  return `${v.format}, ${protector}; unlocked at this boot by ${unlocked}`;
}

function randomSecret() {
  const bytes = new Uint8Array(24);
  crypto.getRandomValues(bytes);
  return "whsec_" + btoa(String.fromCharCode(...bytes));
}

async function routesView() {
  const settings = await api("GET", "/api/v1/settings");
  const routes = settings.routes || [];
  const save = async (next) => {
    await api("PUT", "/api/v1/settings", { routes: next });
    await routesView();
  };
  const secretOut = h("div", { id: "secret-once" });
  const result = h("p", { id: "test-result", role: "status" });
  const addForm = form("route", "Add a route", [
    ["match", "Recipients (exact address or *@domain)", { placeholder: "*@in.example.com" }],
    ["webhook", "Webhook URL (https://…)", { type: "url" }],
    ["webhook_secret", "Webhook secret (whsec_…)", { autocomplete: "off" }],
    ["webhook_ca", "Extra CA bundle file on the node (optional)", {}],
    ["attachments", "Attachments", { type: "select", options: ["inline", "s3"] }],
    ["s3", "S3 connection name (when attachments go to S3)", {}],
    ["dmarc", "DMARC (report: verdicts in the payload; enforce: refuse p=reject failures)", { type: "select", options: ["report", "enforce"] }],
  ], "Add route", async (v) => {
    const route = { match: v.match, webhook: v.webhook, webhook_secret: v.webhook_secret, attachments: v.attachments, dmarc: v.dmarc };
    if (v.webhook_ca) route.webhook_ca = v.webhook_ca;
    if (v.s3) route.s3 = v.s3;
    await save(routes.concat([route]));
  });
  const generate = h("button", { type: "button", class: "secondary", id: "generate-secret", onclick: () => {
    const secret = randomSecret();
    document.getElementById("route-webhook_secret").value = secret;
    secretOut.replaceChildren(h("p", {}, "Copy this secret to the receiver now; the node will never show it again:"),
      h("div", { class: "once" }, secret));
  } }, "Generate whsec_ secret");
  addForm.querySelector("form").insertBefore(h("div", {}, generate, secretOut), addForm.querySelector("button[type=submit]"));
  show(
    h("h1", {}, "Routes"),
    h("section", { class: "card" },
      routes.length === 0 ? h("p", { class: "muted" }, "No routes yet: mail is refused (550 5.1.1) until one matches.") :
        h("div", { class: "table-wrap" }, h("table", { id: "routes" },
          h("tr", {}, h("th", {}, "Recipients"), h("th", {}, "Webhook"), h("th", {}, "Attachments"), h("th", {}, "DMARC"), h("th", {}, "")),
          routes.map((r, i) => h("tr", {},
            h("td", { class: "mono" }, r.match), h("td", { class: "mono" }, r.webhook),
            h("td", {}, r.attachments || "inline", r.s3 ? ` (${r.s3})` : ""),
            h("td", {}, h("select", { "data-dmarc": i, onchange: async (e) => {
              await save(routes.map((x, j) => (j === i ? Object.assign({}, x, { dmarc: e.target.value }) : x)));
            } }, ["report", "enforce"].map((m) => {
              const o = h("option", { value: m }, m);
              if ((r.dmarc || "report") === m) o.selected = true;
              return o;
            }))),
            h("td", {},
              h("button", { type: "button", class: "secondary", "data-test": i, onclick: async () => {
                result.textContent = "Sending a signed sample payload…";
                try {
                  const answer = await api("POST", `/api/v1/settings/routes/${i}/test`);
                  const status = answer.status === null ? "no HTTP answer" : `HTTP ${answer.status}`;
                  result.textContent = `Test delivery ${answer.outcome}: the receiver gave ${status}` + (answer.detail ? ` (${answer.detail})` : ".");
                } catch (err) { result.textContent = err.message; }
              } }, "Send test delivery"), " ",
              h("button", { type: "button", class: "danger", onclick: async () => {
                if (!confirm(`Delete the route for ${r.match}?`)) return;
                await save(routes.filter((_, j) => j !== i));
              } }, "Delete")),
          )))),
      result),
    addForm,
  );
}

async function retentionView() {
  const settings = await api("GET", "/api/v1/settings");
  const r = settings.retention || {};
  const f = form("retention", "Retention and subject storage", [
    ["metadata", "Keep delivery metadata for (e.g. 24h, 30d)", { value: r.metadata || "", placeholder: "24h (default)" }],
    ["audit", "Keep the audit log for (e.g. 90d)", { value: r.audit || "", placeholder: "90d (default)" }],
    ["store_subject", "Store subjects", { type: "select", options: ["true", "false"] }],
  ], "Save", async (v) => {
    // An empty field keeps the default.
    const retention = { store_subject: v.store_subject === "true" };
    if (v.metadata) retention.metadata = v.metadata;
    if (v.audit) retention.audit = v.audit;
    await api("PUT", "/api/v1/settings", { retention });
    f.querySelector("form").append(h("p", { class: "ok" }, "Saved; in effect now."));
  });
  f.querySelector("select").value = r.store_subject === false ? "false" : "true";
  show(h("h1", {}, "Retention"), f);
}

const SCOPES = ["metrics:read", "emails:read", "emails:delete", "audit:read", "settings:read", "settings:write", "update:read", "update:write", "admin"];

async function keysView() {
  const list = await api("GET", "/api/v1/keys");
  const created = h("div", { id: "key-once" });
  const scopeBoxes = h("div", { class: "checks" }, SCOPES.map((s) =>
    h("label", {}, h("input", { type: "checkbox", name: "scope", value: s }), " ", s)));
  const f = form("key", "Create an API key", [["name", "Name", {}]], "Create key", async (v, el) => {
    const scopes = [...el.querySelectorAll("input[name=scope]:checked")].map((c) => c.value);
    const key = await api("POST", "/api/v1/keys", { name: v.name, scopes });
    await keysView();
    document.getElementById("key-once").replaceChildren(
      h("p", {}, `Key "${key.name}" created. Copy it now; it is shown only this once:`),
      h("div", { class: "once", id: "new-key" }, key.key));
  });
  f.querySelector("form").insertBefore(h("div", {}, h("label", {}, "Scopes"), scopeBoxes), f.querySelector("button[type=submit]"));
  show(
    h("h1", {}, "API keys"),
    created,
    h("section", { class: "card" }, h("div", { class: "table-wrap" }, h("table", { id: "keys" },
      h("tr", {}, h("th", {}, "Id"), h("th", {}, "Name"), h("th", {}, "Scopes"), h("th", {}, "Created"), h("th", {}, "")),
      list.keys.map((k) => h("tr", {},
        h("td", { class: "mono" }, k.id), h("td", {}, k.name), h("td", {}, k.scopes.join(", ")), h("td", {}, k.created_at),
        h("td", {}, h("button", { type: "button", class: "danger", onclick: async () => {
          if (!confirm(`Revoke key ${k.name}?`)) return;
          await api("DELETE", `/api/v1/keys/${encodeURIComponent(k.id)}`);
          await keysView();
        } }, "Revoke"))))))),
    f,
  );
}

async function logView(filters) {
  filters = filters || {};
  const query = new URLSearchParams({ limit: "100" });
  for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
  const page = await api("GET", `/api/v1/emails?${query}`);
  const filterForm = form("filters", "Filter", [
    ["status", "Status", { type: "select", options: ["", "delivered", "tempfailed", "rejected", "failed"] }],
    ["recipient", "Recipient address", { value: filters.recipient || "" }],
  ], "Apply", async (v) => logView({ status: v.status, recipient: v.recipient }));
  filterForm.querySelector("select").value = filters.status || "";
  const erasure = form("erasure", "Erase every record for an address", [["address", "Address", {}]], "Erase", async (v) => {
    const result = await api("POST", "/api/v1/erasure", { address: v.address });
    await logView(filters);
    document.getElementById("main").prepend(h("p", { class: "ok" }, `Erased ${result.deleted} record(s).`));
  });
  show(
    h("h1", {}, "Delivery log"),
    filterForm,
    h("section", { class: "card" }, page.items.length === 0 ? h("p", { class: "muted", id: "no-records" }, "No records.") :
      h("div", { class: "table-wrap" }, h("table", { id: "records" },
        h("tr", {}, h("th", {}, "Received"), h("th", {}, "Recipients"), h("th", {}, "Subject"), h("th", {}, "Status"), h("th", {}, "SMTP"), h("th", {}, "DMARC"), h("th", {}, "")),
        page.items.map((r) => h("tr", {},
          h("td", {}, r.received_at), h("td", { class: "mono" }, r.recipients.join(", ")),
          h("td", {}, r.subject === null ? h("span", { class: "muted" }, "(not stored)") : r.subject),
          h("td", {}, r.status), h("td", {}, r.smtp_code), h("td", {}, r.dmarc || "—"),
          h("td", {}, h("button", { type: "button", class: "danger", onclick: async () => {
            if (!confirm("Delete this record?")) return;
            await api("DELETE", `/api/v1/emails/${encodeURIComponent(r.id)}`);
            await logView(filters);
          } }, "Delete"))))))),
    erasure,
  );
}

async function auditView() {
  const page = await api("GET", "/api/v1/audit?limit=200");
  show(
    h("h1", {}, "Audit log"),
    h("section", { class: "card" }, h("div", { class: "table-wrap" }, h("table", { id: "audit" },
      h("tr", {}, h("th", {}, "Time"), h("th", {}, "Actor"), h("th", {}, "Action"), h("th", {}, "Target"), h("th", {}, "Detail")),
      page.items.map((e) => h("tr", {},
        h("td", {}, e.time), h("td", { class: "mono" }, e.actor), h("td", {}, e.action),
        h("td", { class: "mono" }, e.target || ""), h("td", {}, e.detail || "")))))),
  );
}

/** `development_keys` of the status, in words (issue 16). */
function developmentKeysText(development) {
  return development
    ? "yes: the development release key is trusted; anyone can sign a release this node installs"
    : "no: only the release keys this image was built with are trusted";
}

async function complianceView() {
  const [settings, health, status] = await Promise.all([api("GET", "/api/v1/settings"), api("GET", "/healthz"), api("GET", "/api/v1/status")]);
  const v = status.volume;
  const r = settings.retention || {};
  const routes = settings.routes || [];
  const s3 = settings.s3 || {};
  const storeSubject = r.store_subject !== false;
  const item = (...t) => h("li", {}, ...t);
  show(
    h("h1", {}, "Compliance report"),
    h("p", { class: "muted" }, `Generated ${new Date().toISOString()} from the live settings of mxnode ${health.version}.`),
    h("button", { type: "button", id: "print", onclick: () => window.print() }, "Print"),
    h("section", { class: "card" }, h("h2", {}, "What this node stores"),
      h("ul", {},
        item("Per delivery attempt, encrypted: record id, Message-ID, recipient address(es), route, ",
          storeSubject ? "subject, " : "", "received and delivered times, status, SMTP reply code, webhook HTTP status and latency, attachment summary (file name, content type, size), message size, the DMARC result (no domain)."),
        item(storeSubject ? "Subjects are stored." : "Subjects are not stored."),
        item("An audit log of security-relevant events (logins, key and settings changes, deletions, exports)."))),
    h("section", { class: "card" }, h("h2", {}, "Never stored"),
      h("ul", {}, item("Message bodies, attachments and headers other than Message-ID (never written to any disk)."),
        item("The sender address."), item("Anything derived from content (hashes, links, extracted text)."),
        item("Passwords and API keys (only hashes); secrets are encrypted."))),
    h("section", { class: "card" }, h("h2", {}, "Where"),
      h("ul", {}, item("Metadata: this node's own store (RocksDB), nowhere else."),
        routes.map((rt) => item(`Mail for ${rt.match}: posted to ${rt.webhook}` +
          (rt.attachments === "s3" ? `; attachments and raw message stored in S3 connection "${rt.s3}" (${(s3[rt.s3] || {}).endpoint || "?"})` : "; attachments inline in the webhook payload") +
          "; SPF, DKIM, DMARC and ARC verified for every message" +
          (rt.dmarc === "enforce" ? "; DMARC enforced: p=reject failures refused (550), DNS failures deferred (451)" : "; DMARC reported only, never enforced"))),
        routes.length === 0 ? item("No routes: all mail is refused.") : null)),
    h("section", { class: "card" }, h("h2", {}, "How long"),
      h("dl", { class: "facts" },
        h("dt", {}, "Delivery metadata"), h("dd", { id: "retention-metadata" }, r.metadata || "24h"),
        h("dt", {}, "Audit log"), h("dd", {}, r.audit || "90d"),
        h("dt", {}, "Message content"), h("dd", {}, "only in memory until the receiver answered (seconds)"))),
    h("section", { class: "card" }, h("h2", {}, "Encryption"),
      h("dl", { class: "facts" },
        h("dt", {}, "In transit"), h("dd", {}, "SMTP STARTTLS (TLS 1.2+) when a certificate is set; webhooks and S3 over verified HTTPS (TLS 1.2+); this console over HTTPS."),
        h("dt", {}, "At rest"), h("dd", {}, "every stored value AES-256-GCM under per-hour/per-day keys wrapped by the node master key; expired keys are destroyed (crypto-shredding)."),
        h("dt", {}, "Disk encryption (LUKS)"), h("dd", { id: "luks" }, v === null ? "unknown (not an appliance image)" : `${v.format}: the data volume holding the store is encrypted`),
        h("dt", {}, "TPM sealing"), h("dd", { id: "tpm" }, v === null ? "unknown (not an appliance image)" : volumeText(v)))),
    h("section", { class: "card" }, h("h2", {}, "Software updates"),
      h("dl", { class: "facts" },
        h("dt", {}, "Releases accepted"), h("dd", {}, "only signed (Ed25519) by a trusted release key, verified by the node and again by the installer; never older than the installed version."),
        h("dt", {}, "Development keys"), h("dd", { id: "compliance-development-keys", class: status.development_keys ? "error" : "" },
          developmentKeysText(status.development_keys)))),
  );
}

// ---------------------------------------------------------------- updates

/** What each update state means to the operator (the API's `state`, DESIGN §9). */
const UPDATE_STATES = {
  idle: "idle",
  checking: "checking the channel…",
  downloading: "downloading and verifying…",
  staged: "staged: verified and ready; press Apply to install it",
  requested: "install requested: waiting for the installer to write the other slot",
  refused: "refused (see the last error)",
  failed: "failed (see the last error)",
  channel_stale: "channel stale: its signed manifest has expired; the channel or a mirror may be withholding updates (see the last error)",
  installing: "installing into the other slot…",
  installed: "installed",
  "reboot-pending": "installed; waiting for the reboot",
  "rolled-back": "rolled back (see the last error)",
};
/** States in which the page re-reads the status by itself (the installer reports progress). */
const UPDATE_BUSY = ["checking", "downloading", "installing", "requested"];
/** How often the page re-reads the status while something runs. */
const UPDATE_POLL_MS = 1000;
/**
 * For at most this long after the page was opened or an action started: each read counts as
 * activity of the session, and a page left open must not keep it alive for ever (say, a
 * request no installer takes on a development node).
 */
const UPDATE_POLL_LIMIT_MS = 20 * 60 * 1000;

/**
 * The node's largest bundle (`update::agent::MAX_BUNDLE_BYTES`): a bigger file is refused here,
 * since the node's early 413 would reach the browser as a broken upload, without its message.
 */
const MAX_BUNDLE_BYTES = 8 * 1024 * 1024 * 1024;

/** The timer re-reading the update status, or null. */
let updatePoll = null;

function mib(bytes) {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

/** The facts of `GET /api/v1/update` as a definition list. */
function updateFacts(v) {
  const p = v.progress || { done: 0, total: 0 };
  const blessed = v.blessed === null ? "not an A/B boot (development node): updates cannot be installed here"
    : v.blessed ? "yes" : "not yet: updates wait until this boot has been confirmed healthy";
  return h("dl", { class: "facts", id: "update-facts" },
    h("dt", {}, "Running version"), h("dd", { id: "update-version" }, v.version),
    h("dt", {}, "Root slot"), h("dd", { id: "update-slot" }, v.slot === null ? "none (not an A/B appliance)" : v.slot),
    h("dt", {}, "Boot blessed"), h("dd", { id: "update-blessed" }, blessed),
    h("dt", {}, "Version floor"), h("dd", { id: "update-floor" }, v.floor === null ? "none recorded" : v.floor),
    h("dt", {}, "Channel"), h("dd", { id: "update-channel", class: "mono" }, v.channel === null ? "none configured (upload bundles below)" : v.channel),
    h("dt", {}, "Last check"), h("dd", { id: "update-last-check" }, v.last_check === null ? "never" : v.last_check),
    h("dt", {}, "Available release"), h("dd", { id: "update-available" }, v.available === null ? "none" : v.available),
    h("dt", {}, "State"), h("dd", { id: "update-state", "data-state": v.state, class: v.state === "channel_stale" ? "error" : "" }, UPDATE_STATES[v.state] || v.state),
    h("dt", {}, "Progress"), h("dd", { id: "update-progress" }, p.total === 0 ? "nothing in progress" : [
      h("progress", { max: p.total, value: p.done }),
      ` ${mib(p.done)} of ${mib(p.total)} (${Math.floor(100 * p.done / p.total)} %)`]),
    h("dt", {}, "Last error"), h("dd", { id: "update-last-error", class: v.last_error ? "error" : "" },
      v.last_error === null ? "none" : `${v.last_error.message} (${v.last_error.code})`),
  );
}

function updateHistory(v) {
  if (v.history.length === 0) return h("p", { class: "muted", id: "update-no-history" }, "No updates installed, rolled back or refused by the installer yet.");
  return h("div", { class: "table-wrap" }, h("table", { id: "update-history" },
    h("tr", {}, h("th", {}, "Time"), h("th", {}, "Event"), h("th", {}, "Version"), h("th", {}, "Slot"), h("th", {}, "Detail")),
    // Newest first.
    v.history.slice().reverse().map((e) => h("tr", {},
      h("td", {}, e.at), h("td", {}, e.event.replace("_", " ")), h("td", { class: "mono" }, e.version),
      h("td", {}, e.slot || ""), h("td", {}, e.message)))));
}

/** Shows `view` in the page's status and history cards (if the page is still open). */
function renderUpdate(view) {
  const facts = document.getElementById("update-facts");
  const history = document.getElementById("update-history-card");
  if (!facts || !history) return false;
  facts.replaceWith(updateFacts(view));
  history.replaceChildren(h("h2", {}, "History"), updateHistory(view));
  return true;
}

/**
 * Re-reads the status every UPDATE_POLL_MS while `busy()` or the state says work is going on,
 * until `until` (ms since the epoch).
 */
function pollUpdate(busy, until) {
  clearTimeout(updatePoll);
  updatePoll = setTimeout(async () => {
    updatePoll = null;
    if (location.hash !== "#update" || Date.now() > until) return;
    try {
      const view = await api("GET", "/api/v1/update");
      if (renderUpdate(view) && (busy() || UPDATE_BUSY.includes(view.state))) pollUpdate(busy, until);
    } catch (_) { /* the next user action shows the error */ }
  }, UPDATE_POLL_MS);
}

/** The text of an update action's error: refusals name their reason and code. */
function updateError(what, err) {
  if (err.status === 422) return `${what} refused: ${err.message} (${err.code})`;
  if (err.code) return `${what} failed: ${err.message} (${err.code})`;
  return `${what} failed: ${err.message}`;
}

async function updateView() {
  const view = await api("GET", "/api/v1/update");
  const result = h("p", { id: "update-result", role: "status" });
  const uploadResult = h("p", { id: "update-upload-result", role: "status" });
  let running = false;
  /** Runs one update request (the buttons disabled, the status re-read meanwhile), then shows the answer in `out`. */
  const act = async (out, what, request, done) => {
    if (running) return;
    running = true;
    const buttons = document.querySelectorAll("#update-actions button, #update-upload button");
    buttons.forEach((b) => { b.disabled = true; });
    // Only the answer to this action stays on the page.
    result.textContent = "";
    uploadResult.textContent = "";
    out.className = "muted";
    out.textContent = `${what}…`;
    pollUpdate(() => running, Date.now() + UPDATE_POLL_LIMIT_MS);
    try {
      const answer = await request();
      renderUpdate(answer);
      out.className = "ok";
      out.textContent = done(answer);
    } catch (err) {
      out.className = "error";
      out.textContent = updateError(what, err);
      try { renderUpdate(await api("GET", "/api/v1/update")); } catch (_) { /* shown above */ }
    } finally {
      running = false;
      buttons.forEach((b) => { b.disabled = false; });
    }
  };
  const outcome = (v) => (v.state === "staged" ? `Release ${v.available} is verified and staged. Press Apply to install it.`
    : v.state === "requested" ? `Release ${v.available} is verified; the installer writes it to the other slot.`
      : v.state === "reboot-pending" ? `Release ${v.available} is installed and waits for the reboot.`
        : "This node runs the newest release the channel offers.");
  const file = h("input", { type: "file", id: "update-file", name: "bundle", accept: ".tar,application/x-tar" });
  const upload = h("form", { id: "update-upload", novalidate: true },
    h("label", { for: "update-file" }, "Offline bundle (.tar made by mxnode release bundle)"), file,
    h("button", { type: "submit" }, "Upload and verify"), uploadResult);
  upload.addEventListener("submit", (event) => {
    event.preventDefault();
    const bundle = file.files[0];
    if (!bundle) {
      uploadResult.className = "error";
      uploadResult.textContent = "Choose a bundle file first.";
      return;
    }
    if (bundle.size > MAX_BUNDLE_BYTES) {
      uploadResult.className = "error";
      uploadResult.textContent = `${bundle.name} is larger than the node accepts (${mib(MAX_BUNDLE_BYTES)}): is it a bundle?`;
      return;
    }
    act(uploadResult, `Upload of ${bundle.name}`,
      () => api("POST", "/api/v1/update/upload", bundle), outcome);
  });
  show(
    h("h1", {}, "Updates"),
    h("section", { class: "card" }, h("h2", {}, "Status"), updateFacts(view)),
    h("section", { class: "card", id: "update-actions" }, h("h2", {}, "Actions"),
      h("p", { class: "muted" }, "Releases are verified against the node's trusted keys before anything is written; the installer writes the other root slot and the node reboots into it (in the maintenance window, if one is set). A release that fails its boots rolls back by itself."),
      h("button", { type: "button", id: "update-check", onclick: () => act(result, "Check",
        () => api("POST", "/api/v1/update/check"), outcome) }, "Check now"), " ",
      h("button", { type: "button", class: "secondary", id: "update-apply", onclick: () => act(result, "Apply",
        () => api("POST", "/api/v1/update/apply"), outcome) }, "Apply"),
      result),
    h("section", { class: "card" }, h("h2", {}, "Upload a release (air-gapped sites)"), upload),
    h("section", { class: "card", id: "update-history-card" }, h("h2", {}, "History"), updateHistory(view)),
  );
  if (UPDATE_BUSY.includes(view.state)) pollUpdate(() => false, Date.now() + UPDATE_POLL_LIMIT_MS);
}

// ---------------------------------------------------------------- recovery key

/** Whether this login already asked for a waiting recovery key (once per login). */
let recoveryChecked = false;

/** The data volume's recovery key when the node still holds one, else null. */
async function recoveryPending() {
  if (recoveryChecked) return null;
  try {
    return (await api("GET", "/api/v1/recovery-key")).recovery_key;
  } catch (err) {
    if (err.status !== 404) throw err;
    recoveryChecked = true;
    return null;
  }
}

/** Shows the recovery key until the admin confirms storing it; then the node deletes it. */
function recoveryView(key) {
  document.getElementById("nav").hidden = true;
  const confirmButton = h("button", { type: "button", id: "recovery-confirm", disabled: true, onclick: async () => {
    try {
      await api("DELETE", "/api/v1/recovery-key");
      recoveryChecked = true;
      location.hash = "#status";
      await route();
    } catch (err) { error.textContent = err.message; }
  } }, "I stored it: delete it from the node");
  const error = h("p", { class: "error", role: "alert" });
  show(
    h("h1", {}, "Store the data volume's recovery key"),
    h("section", { class: "card" },
      h("p", {}, "This node's data is on an encrypted volume. If the TPM or the key file can no longer unlock it ",
        "(firmware or Secure Boot changes, a moved disk), this recovery key is the only way to open it. ",
        "Write it down or put it in your password manager now: once you confirm, the node deletes its only copy and never shows it again."),
      h("div", { class: "once", id: "recovery-key" }, key),
      h("label", { class: "check" }, h("input", { type: "checkbox", id: "recovery-stored", onchange: (event) => {
        confirmButton.disabled = !event.target.checked;
      } }), " I have stored the recovery key somewhere safe, outside this node."),
      confirmButton, " ",
      h("button", { type: "button", class: "secondary", id: "recovery-later", onclick: async () => {
        recoveryChecked = true;
        await route();
      } }, "Remind me at the next login"),
      error),
  );
}

// ---------------------------------------------------------------- account

/** The admin's own account: change the password, end every other session. */
async function accountView(notice) {
  const session = await api("GET", "/api/v1/session");
  const done = h("p", { class: "ok", id: "account-notice", role: "status" }, notice || "");
  const ended = (n) => `${n} other session${n === 1 ? "" : "s"} ended.`;
  show(
    h("h1", {}, "Account"),
    h("p", {}, "Logged in as ", h("span", { class: "mono", id: "account-user" }, session.username), "."),
    done,
    form("password", "Change the password", [
      ["current_password", "Current password", { type: "password", autocomplete: "current-password" }],
      ["new_password", "New password (at least 12 characters)", { type: "password", autocomplete: "new-password" }],
    ], "Change password", async (v, el) => {
      const answer = await api("POST", "/api/v1/admin/password", { current_password: v.current_password, new_password: v.new_password });
      el.reset();
      done.textContent = `Password changed. ${ended(answer.ended)}`;
    }),
    h("section", { class: "card" },
      h("h2", {}, "Log out everywhere else"),
      h("p", {}, "Ends every other console session (other browsers, other devices); this one stays."),
      h("button", { type: "button", id: "end-sessions", class: "danger", onclick: async () => {
        try {
          const answer = await api("DELETE", "/api/v1/sessions");
          done.textContent = ended(answer.ended);
        } catch (err) {
          done.textContent = "";
          show(h("p", { class: "error" }, err.message));
        }
      } }, "Log out everywhere else")),
  );
}

// ---------------------------------------------------------------- routing

const VIEWS = { status: statusView, tls: tlsView, s3: s3View, routes: routesView, retention: retentionView, keys: keysView, log: logView, audit: auditView, compliance: complianceView, update: updateView, account: accountView };

async function route() {
  const name = (location.hash || "#status").slice(1);
  const view = VIEWS[name] || statusView;
  document.getElementById("nav").hidden = false;
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === `#${name}`));
  try {
    const recovery = await recoveryPending();
    if (recovery !== null) return recoveryView(recovery);
    await view();
  } catch (err) {
    if (err.status === 401) loginView(err.message);
    else show(h("p", { class: "error" }, err.message));
  }
}

async function boot() {
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("DELETE", "/api/v1/session"); } catch (_) { /* already ended */ }
    loginView("You are logged out.");
  });
  window.addEventListener("hashchange", () => { if (csrf) route(); });
  try {
    const setup = await api("GET", "/api/v1/setup");
    if (setup.setup_required) return setupView();
    const session = await api("GET", "/api/v1/session");
    csrf = session.csrf_token;
    await route();
  } catch (err) {
    if (err.status === 401) loginView();
    else show(h("p", { class: "error" }, err.message));
  }
}

document.addEventListener("DOMContentLoaded", boot);
