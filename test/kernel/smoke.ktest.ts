import { describe, expect, it } from 'vitest';
import { openKernelDevice, MigState } from '../../src/index.js';
import { readdirSync, readlinkSync } from 'node:fs';
import { basename } from 'node:path';

describe('smoke', () => {
  it('opens mtty', async () => {
    const u = process.env.VFIOMIG_A!;
    const cdev = `/dev/vfio/devices/${readdirSync(`/sys/bus/mdev/devices/${u}/vfio-dev`)[0]}`;
    const dev = await openKernelDevice(cdev);
    expect(await dev.migrationFlags()).toBe(7);
    expect(await dev.getState()).toBe(MigState.RUNNING);
    await dev.close();
    const g = basename(readlinkSync(`/sys/bus/mdev/devices/${u}/iommu_group`));
    const dev2 = await openKernelDevice(`/dev/vfio/${g}:${u}`);
    expect(await dev2.migrationFlags()).toBe(7);
    await dev2.close();
  });
});
