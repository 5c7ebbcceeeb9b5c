#!/usr/bin/env node
// MQTT.js over wss:// for tests/websocket.rs. Prints one JSON object per event on stdout:
//   {"event":"connack","code":0}               the CONNACK (code = v5 reason / v3 return code)
//   {"event":"roundtrip","ok":true,"bytes":N}   a QoS 1 publish of N bytes came back byte-exact
//   {"event":"disconnect","code":152}           the server's v5 DISCONNECT
//   {"event":"close"}                           the connection closed
//   {"event":"error","message":"..."}
//
// usage: mqttjs_client.js URL CAFILE CERT KEY USERNAME (4|5) PAYLOAD_BYTES (roundtrip|hold)
// roundtrip: subscribe devices/USERNAME/js, publish PAYLOAD_BYTES, wait for it, exit.
// hold: connect and stay until the server ends the session.
// MQTTJS_ORIGIN in the environment: the Origin header a browser page would send.
'use strict';
const fs = require('fs');
const mqtt = require('mqtt');

const [url, cafile, cert, key, username, version, size, mode] = process.argv.slice(2);
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const payload = Buffer.alloc(Number(size));
for (let i = 0; i < payload.length; i++) payload[i] = (i * 31 + 7) & 0xff;

const client = mqtt.connect(url, {
  ca: fs.readFileSync(cafile),
  cert: fs.readFileSync(cert),
  key: fs.readFileSync(key),
  rejectUnauthorized: true,
  protocolVersion: Number(version),
  username: username || undefined,
  clientId: `js-${username}-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 10000,
  keepalive: 30,
  // MQTT.js copies ca, cert and key into wsOptions when they are not set there.
  wsOptions: process.env.MQTTJS_ORIGIN ? { origin: process.env.MQTTJS_ORIGIN } : undefined,
});
const topic = `devices/${username}/js`;
const timer = setTimeout(() => {
  say({ event: 'error', message: 'timeout' });
  process.exit(2);
}, 30000);

client.on('connect', (connack) => {
  say({ event: 'connack', code: connack.reasonCode ?? connack.returnCode ?? 0 });
  if (mode !== 'roundtrip') return;
  client.subscribe(topic, { qos: 1 }, (err) => {
    if (err) {
      say({ event: 'error', message: String(err) });
      process.exit(1);
    }
    client.publish(topic, payload, { qos: 1 });
  });
});
client.on('message', (t, message) => {
  say({ event: 'roundtrip', ok: t === topic && Buffer.compare(message, payload) === 0, bytes: message.length });
  client.end();
});
client.on('disconnect', (packet) => say({ event: 'disconnect', code: packet.reasonCode ?? 0 }));
client.on('error', (err) => {
  // A refused CONNACK arrives here (with its code) in MQTT.js.
  say({ event: 'error', message: err.message, code: err.code ?? null });
});
client.on('close', () => {
  say({ event: 'close' });
  clearTimeout(timer);
  process.exit(0);
});
