// queue_webhook: the benchmark's Haraka queue plugin (bench target `haraka`, bench/src/peers.rs).
//
// Each message is POSTed as JSON to the webhook sink the mxnode targets deliver to, over HTTPS
// keep-alive, signed like mxnode's deliveries (Standard Webhooks: webhook-id, webhook-timestamp,
// webhook-signature = v1,base64(HMAC-SHA256(key, "id.timestamp.body"))). The sender gets its 250
// only after the sink's 2xx; any other answer or error is a 4xx (DENYSOFT), so the message stays
// with the sender. Nothing is written to disk.
//
// The body:
//   {"version":1,"id":"msg_<transaction uuid>","received_at":"<RFC 3339>",
//    "envelope":{"mail_from","rcpt_to":[...],"helo","remote_ip","tls":null},
//    "size":<bytes>,"raw_base64":"<the whole message, base64>"}
// The message is the one Haraka holds: as received, with the Received header Haraka adds.
// No MIME parsing: the receiver gets the raw message, which is what an SMTP-to-HTTP setup with
// Haraka does without further plugins.
//
// config/queue_webhook.ini, [main]: url (https://...), ca (PEM file to trust), secret (whsec_...).

'use strict'

const crypto = require('node:crypto')
const fs = require('node:fs')
const https = require('node:https')
// Plugins run in a vm context without Node's URL global.
const { URL } = require('node:url')

exports.register = function () {
    const cfg = this.config.get('queue_webhook.ini').main
    this.url = new URL(cfg.url)
    this.key = Buffer.from(cfg.secret.replace(/^whsec_/, ''), 'base64')
    // One keep-alive pool per process, unbounded like mxnode's per-delivery connections.
    this.agent = new https.Agent({
        keepAlive: true,
        maxSockets: Infinity,
        ca: fs.readFileSync(cfg.ca),
    })
}

exports.hook_queue = function (next, connection) {
    const txn = connection.transaction
    txn.message_stream.get_data((raw) => {
        // Equal to the webhook-id header, as in mxnode's payload.
        const id = `msg_${txn.uuid}`
        const body = Buffer.from(
            JSON.stringify({
                version: 1,
                id,
                received_at: new Date().toISOString(),
                envelope: {
                    // String(): plain in @haraka/email-address 3, a callable shim in Haraka's core.
                    mail_from: String(txn.mail_from.address),
                    rcpt_to: txn.rcpt_to.map((r) => String(r.address)),
                    helo: connection.hello.host,
                    remote_ip: connection.remote.ip,
                    tls: null,
                },
                size: raw.length,
                raw_base64: raw.toString('base64'),
            }),
        )
        const timestamp = Math.floor(Date.now() / 1000).toString()
        const signature = crypto
            .createHmac('sha256', this.key)
            .update(`${id}.${timestamp}.`)
            .update(body)
            .digest('base64')
        const request = https.request(this.url, {
            method: 'POST',
            agent: this.agent,
            headers: {
                'content-type': 'application/json',
                'content-length': body.length,
                'webhook-id': id,
                'webhook-timestamp': timestamp,
                'webhook-signature': `v1,${signature}`,
            },
        })
        let answered = false
        const answer = (code, why) => {
            if (answered) return
            answered = true
            if (code === OK) return next(OK)
            connection.logwarn(this, `webhook: ${why}`)
            next(DENYSOFT, 'webhook delivery failed, try again later')
        }
        request.on('response', (response) => {
            // Read the (small) answer to the end so the connection goes back to the pool.
            response.resume()
            response.on('end', () => {
                if (response.statusCode >= 200 && response.statusCode < 300) answer(OK)
                else answer(DENYSOFT, `receiver answered ${response.statusCode}`)
            })
            response.on('error', (error) => answer(DENYSOFT, error.message))
        })
        request.on('error', (error) => answer(DENYSOFT, error.message))
        request.end(body)
    })
}
