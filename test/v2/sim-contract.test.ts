import { createSimDevice, type SimDevice } from '../../src/index.js';
import { deviceContract } from './device-contract.js';

for (const [name, options, temporaryEnd] of [
  ['sim (mtty profile)', { profile: 'mtty' as const }, 'zero' as const],
  ['sim (default, flags 7)', { stateSize: 40_000 }, 'ENOMSG' as const],
  ['sim (flags 1)', { stateSize: 5000, flags: 1 }, 'ENOMSG' as const],
] as const) {
  deviceContract({
    name,
    flags: options.flags ?? 7,
    temporaryEnd,
    async open(which) {
      return createSimDevice({ ...options, seed: which === 'a' ? 1 : 2 });
    },
    async mutate(dev, value) {
      (dev as SimDevice).runFor(1 + (value % 3));
    },
    async fingerprint(dev) {
      return (dev as SimDevice).stateDigest();
    },
  });
}
