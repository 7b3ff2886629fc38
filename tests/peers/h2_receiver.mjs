#!/usr/bin/env node
// A real HTTP/2-only HTTPS webhook receiver for mxnode's end-to-end tests
// (Node's built-in http2 server: ALPN `h2` only, no HTTP/1.1 fallback).
//
// It owns: answering POSTs with a status chosen by the request path,
// recording every POST (headers, body, its own Standard Webhooks signature
// check, the HTTP/2 session it came on) in memory, and serving those records
// to the test over a plain-HTTP control port on 127.0.0.1 (the test's client
// speaks HTTP/1.1 only): `GET /_received` (JSON list), `DELETE /_received`.
//
// It must never: write a received body anywhere (tests scan temp directories
// for content markers), listen on anything but 127.0.0.1, accept an HTTP/1.1
// client on its TLS port, or need anything beyond Node's standard library.
//
// Routes (POST): /ok, /status/<code>, /delay/<ms>/status/<code>. Anything
// else answers 404. Records carry the same fields as webhook_receiver.py's,
// with `http_version` "2" and `connection` the session's number (counting
// from 1), so a test can count the TLS connections the node opened.

import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import { parseArgs } from "node:util";

// Bodies above this are refused with 413 (mxnode's payloads stay far below).
const MAX_BODY_BYTES = 200 * 1024 * 1024;
// Standard Webhooks: receivers should refuse timestamps further than this from now.
const TIMESTAMP_TOLERANCE_SECONDS = 5 * 60;

const { values: args } = parseArgs({
  options: {
    cert: { type: "string" },
    key: { type: "string" },
    secret: { type: "string" },
  },
});
if (!args.cert || !args.key || !args.secret) {
  process.stderr.write("usage: h2_receiver.mjs --cert PEM --key PEM --secret whsec_...\n");
  process.exit(2);
}

const secret = args.secret.startsWith("whsec_") ? args.secret.slice("whsec_".length) : args.secret;
const signingKey = Buffer.from(secret, "base64");
const records = [];
let sessions = 0;

/** True when any `v1,` entry of `webhook-signature` matches (constant time). */
function signatureIsValid(headers, body) {
  const id = headers["webhook-id"];
  const timestamp = headers["webhook-timestamp"];
  const signatures = headers["webhook-signature"];
  if (id === undefined || timestamp === undefined || signatures === undefined) {
    return false;
  }
  const expected = Buffer.from(
    crypto.createHmac("sha256", signingKey).update(`${id}.${timestamp}.`).update(body).digest("base64"),
  );
  let valid = false;
  for (const entry of signatures.split(" ")) {
    const comma = entry.indexOf(",");
    if (comma < 0 || entry.slice(0, comma) !== "v1") {
      continue;
    }
    const candidate = Buffer.from(entry.slice(comma + 1));
    if (candidate.length === expected.length && crypto.timingSafeEqual(candidate, expected)) {
      valid = true;
    }
  }
  return valid;
}

/** True when `webhook-timestamp` is integer unix seconds within tolerance. */
function timestampIsFresh(headers, now) {
  const value = headers["webhook-timestamp"];
  if (value === undefined || !/^[0-9]{1,12}$/.test(value)) {
    return false;
  }
  return Math.abs(now - Number(value)) <= TIMESTAMP_TOLERANCE_SECONDS;
}

/** [status, delay in ms] for a POST path. */
function planFor(path) {
  if (path === "/ok") {
    return [200, 0];
  }
  let m = /^\/status\/([2-5][0-9][0-9])$/.exec(path);
  if (m) {
    return [Number(m[1]), 0];
  }
  m = /^\/delay\/([0-9]{1,9})\/status\/([2-5][0-9][0-9])$/.exec(path);
  if (m) {
    return [Number(m[2]), Number(m[1])];
  }
  return [404, 0];
}

function answer(stream, status, body) {
  if (stream.destroyed || stream.closed) {
    return;
  }
  stream.respond({ ":status": status, "content-type": "application/json" });
  stream.end(body);
}

const server = http2.createSecureServer({
  cert: fs.readFileSync(args.cert),
  key: fs.readFileSync(args.key),
  allowHTTP1: false,
  ALPNProtocols: ["h2"],
  minVersion: "TLSv1.2",
});

server.on("session", (session) => {
  sessions += 1;
  session.connectionNumber = sessions;
  session.on("error", () => {});
});

server.on("stream", (stream, rawHeaders) => {
  stream.on("error", () => {});
  const method = rawHeaders[":method"];
  const path = rawHeaders[":path"];
  if (method !== "POST") {
    answer(stream, 405, "{}");
    return;
  }
  const chunks = [];
  let length = 0;
  let tooLarge = false;
  stream.on("data", (chunk) => {
    length += chunk.length;
    if (length > MAX_BODY_BYTES) {
      tooLarge = true;
    } else {
      chunks.push(chunk);
    }
  });
  stream.on("end", () => {
    if (tooLarge) {
      answer(stream, 413, "{}");
      return;
    }
    const body = Buffer.concat(chunks);
    const now = Date.now() / 1000;
    const headers = {};
    for (const [name, value] of Object.entries(rawHeaders)) {
      if (!name.startsWith(":")) {
        headers[name.toLowerCase()] = Array.isArray(value) ? value.join(", ") : String(value);
      }
    }
    const text = body.toString("utf8");
    let parsed = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
    const record = {
      path,
      body_bytes: body.length,
      body_sha256: crypto.createHash("sha256").update(body).digest("hex"),
      time: now,
      headers,
      raw_body: text,
      json: parsed,
      signature_valid: signatureIsValid(headers, body),
      timestamp_fresh: timestampIsFresh(headers, now),
      status: null,
      acknowledged: false,
      connection: stream.session ? stream.session.connectionNumber : 0,
      http_version: "2",
    };
    // Recorded before answering, so a test sees requests still being delayed.
    records.push(record);
    const [status, delay] = planFor(path);
    setTimeout(() => {
      record.status = status;
      record.acknowledged = status >= 200 && status < 300;
      answer(stream, status, "{}");
    }, delay);
  });
});

const control = http.createServer((req, res) => {
  if (req.url === "/_received" && req.method === "GET") {
    const body = JSON.stringify(records);
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
    res.end(body);
  } else if (req.url === "/_received" && req.method === "DELETE") {
    records.length = 0;
    res.writeHead(200, { "content-type": "application/json", "content-length": 2 });
    res.end("{}");
  } else {
    res.writeHead(404, { "content-length": 0 });
    res.end();
  }
});

// Stop when the test process that started us dies without killing us.
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) {
    process.exit(0);
  }
}, 1000).unref();

server.listen(0, "127.0.0.1", () => {
  control.listen(0, "127.0.0.1", () => {
    process.stdout.write(`listening ${server.address().port} ${control.address().port}\n`);
  });
});
