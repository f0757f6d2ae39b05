/**
 * The exact v1 access sequences QEMU 7.2 (hw/vfio/migration.c) issues, as
 * docs/protocol.md#qemu-v1-caller describes them, replayed against the bridge: a legacy
 * caller must work unchanged on a v2 device.
 */
import { describe, expect, it } from 'vitest';
import { createSimDevice, openV1Bridge, type V1Bridge } from '../../src/index.js';
import { readU32, readU64, writeU32, writeU64 } from '../../src/v1/region-access.js';

const MASK = 7,
  RUNNING = 1,
  SAVING = 2,
  RESUMING = 4;

/** vfio_migration_set_state(mask, value): read, (old & mask) | value, write. */
async function setState(r: V1Bridge, mask: number, value: number): Promise<void> {
  const old = await readU32(r, 0);
  await writeU32(r, 0, ((old & mask) | value) >>> 0);
}

/** vfio_mig_rw(): naturally aligned 8/4/2/1-byte pieces (the data section is page aligned). */
const pieceSize = (remaining: number) => (remaining >= 8 ? 8 : remaining >= 4 ? 4 : remaining >= 2 ? 2 : 1);

/** vfio_save_buffer: data_offset, then data_size, then 8-byte reads of the data. */
async function saveBuffer(r: V1Bridge, out: number[]): Promise<number> {
  const off = Number(await readU64(r, 16));
  const size = Number(await readU64(r, 24));
  const sec = Math.min(size, r.size - off); // get_data_section_size
  for (let i = 0; i < sec;) {
    const n = pieceSize(sec - i);
    out.push(...(await r.read(off + i, n)));
    i += n;
  }
  return size;
}

async function qemuLiveMigrationSource(r: V1Bridge, threshold: bigint): Promise<Buffer> {
  const out: number[] = [];
  await setState(r, MASK, SAVING); // vfio_save_setup: 001 -> 011
  for (let round = 0; round < 1000; round++) {
    const pending = await readU64(r, 8); // vfio_save_pending
    if (pending < threshold) break;
    // vfio_save_iterate: one chunk per call
    if (pending === 0n && (await readU64(r, 8)) === 0n) break;
    await saveBuffer(r, out);
  }
  await setState(r, ~RUNNING, 0 | SAVING); // vm_stop_force_state: 011 -> 010
  await setState(r, ~RUNNING, SAVING); // vfio_save_complete_precopy: a same-state write
  let pending = await readU64(r, 8);
  while (pending > 0n) {
    if ((await saveBuffer(r, out)) === 0) break;
    pending = await readU64(r, 8);
  }
  await setState(r, ~SAVING, 0); // 010 -> 000
  return Buffer.from(out);
}

async function qemuDestination(r: V1Bridge, records: Buffer[]): Promise<void> {
  await setState(r, ~MASK, RESUMING); // vfio_load_setup: 001 -> 100
  for (const rec of records) {
    let done = 0;
    while (done < rec.length) {
      const off = Number(await readU64(r, 16)); // re-read before every piece
      const piece = Math.min(rec.length - done, r.size - off);
      for (let i = 0; i < piece;) {
        const n = pieceSize(piece - i);
        await r.write(off + i, rec.subarray(done + i, done + i + n));
        i += n;
      }
      await writeU64(r, 24, BigInt(piece)); // the "consume now" trigger
      done += piece;
    }
  }
  await setState(r, ~MASK, RUNNING); // VM start: 100 -> 001
}

describe('QEMU 7.2 v1 access sequences on the bridge', () => {
  it.each([7, 3, 1])(
    'live migration with flags %i (pre-copy real or virtual), records re-chunked on the destination',
    async (flags) => {
      const a = createSimDevice({ flags, stateSize: 50_000, seed: 1 });
      const b = createSimDevice({ flags, stateSize: 50_000, seed: 2 });
      const data = await qemuLiveMigrationSource(await openV1Bridge(a, { sectionSize: 8192 }), 1n);
      expect(await a.getState()).toBe(1); // v2 STOP: the source stays at 000
      // The destination's window is smaller than the source's records (QEMU re-chunks).
      const records: Buffer[] = [];
      for (let i = 0; i < data.length; i += 8192) records.push(data.subarray(i, i + 8192));
      await qemuDestination(await openV1Bridge(b, { sectionSize: 4096 }), records);
      expect(b.stateDigest()).toBe(a.stateDigest());
    },
  );

  it('savevm of a paused VM: 001 -> 010 by the VM-change handler, 010 -> 010 by save_setup, iterate until pending is 0', async () => {
    const a = createSimDevice({ stateSize: 20_000, seed: 3 });
    const r = await openV1Bridge(a, { sectionSize: 4096 });
    const out: number[] = [];
    await setState(r, ~RUNNING, SAVING); // 001 -> 010
    await setState(r, MASK, SAVING); // 010 -> 010, same state
    while ((await readU64(r, 8)) > 0n) await saveBuffer(r, out); // vfio_save_iterate until it returns 1
    await setState(r, ~RUNNING, SAVING); // complete_precopy: 010 -> 010
    expect(await readU64(r, 8)).toBe(0n);
    await setState(r, ~SAVING, 0); // 010 -> 000
    await setState(r, ~MASK, RUNNING); // resume after savevm: 000 -> 001
    const b = createSimDevice({ stateSize: 20_000, seed: 4 });
    await qemuDestination(await openV1Bridge(b, { sectionSize: 4096 }), [Buffer.from(out)]);
    expect(b.stateDigest()).toBe(a.stateDigest());
  });

  it('a cancelled migration: the notifier writes 011 -> 001 and the device runs again', async () => {
    const a = createSimDevice({ stateSize: 20_000 });
    const r = await openV1Bridge(a, { sectionSize: 4096 });
    await setState(r, MASK, SAVING);
    await readU64(r, 8);
    await saveBuffer(r, []);
    await setState(r, ~(SAVING | RESUMING), RUNNING); // MIGRATION_STATUS_CANCELLED
    expect(await readU32(r, 0)).toBe(1);
    expect(await a.getState()).toBe(2); // v2 RUNNING, session ended
    expect(await readU64(r, 8)).toBe(0n);
  });

  it('ordinary stop/cont writes 001 -> 000 -> 001', async () => {
    const a = createSimDevice({ stateSize: 100 });
    const r = await openV1Bridge(a);
    await setState(r, ~RUNNING, 0);
    expect(await a.getState()).toBe(1);
    await setState(r, ~MASK, RUNNING);
    expect(await a.getState()).toBe(2);
  });
});
