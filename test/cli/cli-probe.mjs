// Loaded into a spawned CLI with --import (test/cli/spawn-cli.ts, probe: true):
// writes one line to fd 3 at the points a test waits for before it signals the
// process (a file opened, a simulated device's call), so no test sleeps for
// "long enough". Touches nothing the CLI sees.
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

const dist = new URL('../../dist/', import.meta.url);
const { SimDevice } = await import(new URL('v2/sim/sim-device.js', dist).href);
const { migStateName } = await import(new URL('v2/uapi.js', dist).href);

function say(line) {
  try {
    fs.writeSync(3, `${line}\n`);
  } catch {
    // the test stopped listening
  }
}

const openSync = fs.openSync;
fs.openSync = function (path, ...rest) {
  say(`open ${path}`);
  return openSync.call(this, path, ...rest);
};
const open = fs.promises.open;
fs.promises.open = function (path, ...rest) {
  say(`open ${path}`);
  return open.call(this, path, ...rest);
};
syncBuiltinESMExports(); // `import { openSync } from 'node:fs'` now sees the wrappers

const proto = SimDevice.prototype;
const setState = proto.setState;
proto.setState = async function (state) {
  const s = await setState.call(this, state);
  say(`setState ${migStateName(state)}`);
  return s;
};
for (const name of ['stateDigest', 'reset']) {
  const fn = proto[name];
  proto[name] = function (...args) {
    say(name);
    return fn.apply(this, args);
  };
}
