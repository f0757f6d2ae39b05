import { expect, it } from 'vitest';
import { main } from '../examples/bridge-roundtrip.js';

it('the README library example runs and reproduces the state', async () => {
  const r = await main();
  expect(r.same).toBe(true);
  expect(r.bytes).toBeGreaterThan(4 << 20);
});
