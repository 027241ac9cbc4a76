'use strict';
// One simulated plug from the npm package tplink-smarthome-simulator (written by
// others), driven by the Python tests through tests/npmpeers.py.
//
//   node simulator.js '{"model": "hs300", "alias": "Strip", "mac": "50:c7:bf:00:00:01"}'
//
// Options: model, alias, mac, deviceId, data (merged into the device's data), keep_open.
// Listens on 127.0.0.1 only (TCP, and UDP on the same port number), then prints
// one JSON line: {"event": "listening", "tcp_port": N, "udp_port": N, ...}.
// After that stdin/stdout is a JSON-lines control channel, one answer per line:
//   {"cmd": "state"}      -> {"ok": true, "sysinfo": ..., "data": ..., "requests": [...], ...}
//   {"cmd": "reset_log"}  -> {"ok": true}  (forgets the requests received so far)
// Every request the device decodes (TCP or UDP) is recorded before it is processed,
// so a test can assert that nothing at all was sent to the plug. Exits when stdin
// closes, on SIGTERM and on SIGINT.

const readline = require('node:readline');
const { Device } = require('tplink-smarthome-simulator');

const options = JSON.parse(process.argv[2] || '{}');
const model = options.model || 'hs100';
const data = { ...(options.data || {}) };
if (options.mac != null) data.mac = options.mac;
if (options.deviceId != null) data.deviceId = options.deviceId;

const requests = [];
const errors = [];
let connections = 0;

function decoded(protocol, text) {
  let request = null;
  try {
    request = JSON.parse(text);
  } catch (err) {
    request = null; // not JSON: the raw text is kept
  }
  requests.push({ time: Date.now() / 1000, protocol, text, request });
}

// Wrap the device's message processing: each decoded request is logged first.
function record(device) {
  for (const [method, protocol] of [['processTcpMessage', 'tcp'], ['processUdpMessage', 'udp']]) {
    const original = device[method].bind(device);
    // eslint-disable-next-line no-param-reassign
    device[method] = (msg) => {
      decoded(protocol, String(msg));
      return original(msg);
    };
  }
  // An EventEmitter without an 'error' listener throws: a peer resetting its connection
  // (or a request the device cannot process) must not kill the simulator.
  device.deviceNetworking.on('error', (err) => {
    errors.push(String(err && err.message ? err.message : err));
  });
}

function newDevice() {
  const device = new Device({
    model,
    address: '127.0.0.1',
    port: 0,
    alias: options.alias,
    data: JSON.parse(JSON.stringify(data)),
  });
  // The package's HS models declare endSocketAfterResponse = true (a plug closes the TCP
  // connection after each answer), but Device (5.0.1) does not pass it on from the model,
  // so it is set here; {"keep_open": true} keeps connections open instead.
  device.endSocketAfterResponse = !options.keep_open;
  record(device);
  return device;
}

// The device binds UDP on a free port, then TCP on the same number, which an outgoing
// connection may hold (EADDRINUSE): then a new device tries another port. The package
// would retry the same port later on its own; that retry is disarmed on the device given up.
async function startDevice(tries = 20) {
  let last;
  for (let i = 0; i < tries; i += 1) {
    const device = newDevice();
    try {
      // eslint-disable-next-line no-await-in-loop
      await device.start();
      return device;
    } catch (err) {
      last = err;
      const { server } = device.deviceNetworking;
      if (server) server.listen = () => server;
      // eslint-disable-next-line no-await-in-loop
      await device.stop().catch(() => {});
      if (!err || err.code !== 'EADDRINUSE') throw err;
    }
  }
  throw last;
}

function answer(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

let device = null;

function state() {
  const sysinfo = { ...device.api.system.get_sysinfo() };
  delete sysinfo.err_code;
  return {
    ok: true,
    model,
    mac: device.mac,
    sysinfo,
    children: device.children ? device.children.map((c) => c.sysinfo) : [],
    timezone: device.data.time && device.data.time.timezone,
    cloud: device.data.cnCloud && device.data.cnCloud.info,
    schedule: device.data.schedule && device.data.schedule.rules,
    data: device.data,
    requests,
    connections,
    errors,
  };
}

function control(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    answer({ ok: false, error: `not JSON: ${err.message}` });
    return;
  }
  switch (cmd && cmd.cmd) {
    case 'state':
      answer(state());
      break;
    case 'reset_log':
      requests.length = 0;
      errors.length = 0;
      connections = 0;
      answer({ ok: true });
      break;
    default:
      answer({ ok: false, error: `unknown cmd: ${JSON.stringify(cmd && cmd.cmd)}` });
  }
}

function quit(code) {
  // No graceful server.close(): it would wait for idle client connections.
  process.exit(code);
}

process.on('SIGTERM', () => quit(0));
process.on('SIGINT', () => quit(0));
process.stdout.on('error', () => quit(0)); // the test went away

startDevice()
  .then((started) => {
    device = started;
    device.deviceNetworking.server.on('connection', () => {
      connections += 1;
    });
    const udp = device.deviceNetworking.udpSocket;
    answer({
      event: 'listening',
      model,
      address: device.address,
      tcp_port: device.port,
      udp_port: udp ? udp.address().port : null,
      mac: device.mac,
      alias: device.api.system.get_sysinfo().alias,
    });
    const rl = readline.createInterface({ input: process.stdin, terminal: false });
    rl.on('line', (line) => {
      if (line.trim()) control(line);
    });
    rl.on('close', () => quit(0));
  })
  .catch((err) => {
    process.stderr.write(`simulator: could not start: ${err && err.stack ? err.stack : err}\n`);
    quit(1);
  });
