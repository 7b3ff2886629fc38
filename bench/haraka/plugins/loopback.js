// loopback: what the benchmark's Haraka needs besides its queue plugin (bench/src/peers.rs).
//
// - No reverse DNS: every client is the load generator on 127.0.0.1, and the benchmark sends
//   nothing off the machine (Haraka would otherwise ask the system's resolver per connection).
// - Every recipient is accepted, as mxnode's bench route (`*@bench.test`) accepts them all;
//   Haraka refuses recipients no rcpt_to plugin accepts.

'use strict'

exports.hook_lookup_rdns = (next) => next(OK, 'localhost')

exports.hook_rcpt = (next) => next(OK)
