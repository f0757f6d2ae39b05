/**
 * Every failure a caller of the library can meet is a VfioError with a
 * stable code, the positive errno, the operation and, where a caller can do
 * something about it, a hint key (details.hint): one row per failing input,
 * in the manner of undici's test/errors.js.
 */
import { describe, expect, it } from 'vitest';
import {
  MigState,
  VfioError,
  checkConformance,
  createSimDevice,
  hintOf,
  isVfioError,
  migrationPath,
  openDevice,
  openV1Bridge,
  saveV1,
  type ErrorHint,
} from '../src/index.js';
import { errorLine, exitCodeFor } from '../src/cli/output.js';
import { KernelDevice, openCdev } from '../src/v2/kernel/kernel-device.js';
import { checkHostByteOrder, type SysCalls } from '../src/v2/kernel/sys.js';
import { VFIO_DEVICE_BIND_IOMMUFD, decodeRegionInfo, encodeRegionInfo, vfio_region_info } from '../src/v2/uapi.js';

const S = MigState;

/** A kernel that fails every ioctl `request` (or all) with `code`, and opens anything. */
function failingKernel(code: string, request?: number): SysCalls {
  let fd = 10;
  const fail = (r: number, op: string, device: string) => {
    if (request === undefined || r === request) throw new VfioError(code, op, device, undefined, { syscall: 'ioctl' });
    return 0;
  };
  return {
    open: () => fd++,
    close: () => undefined,
    ioctl: (_fd, r, _arg, op, device) => fail(r, op, device),
    ioctlInt: (_fd, r, _arg, op, device) => fail(r, op, device),
    read: async () => 0,
    write: async (_fd, from) => from.length,
    pread: () => 0,
    pwrite: (_fd, from) => from.length,
  };
}

/** A region info whose first capability sits right after the struct. */
function regionInfo(sparse: boolean): Uint8Array {
  return encodeRegionInfo({
    index: 9,
    flags: 0,
    size: 4096n,
    offset: 0n,
    ...(sparse ? { sparseMmap: [{ offset: 0n, size: 4096n }] } : { type: { type: 1, subtype: 1 } }),
  });
}
const CAP = vfio_region_info.size;
const u32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);

interface Row {
  what: string;
  run: () => unknown;
  code: string;
  errno: number;
  op: string | RegExp;
  message: string;
  hint?: ErrorHint;
}

const ROWS: Row[] = [
  // Malformed kernel data: the buffer is at fault (EINVAL), never a RangeError.
  {
    what: 'a region info shorter than the struct',
    run: () => decodeRegionInfo(new Uint8Array(8), 'dev'),
    code: 'EINVAL',
    errno: 22,
    op: 'VFIO_DEVICE_GET_REGION_INFO',
    message: 'shorter than the struct',
  },
  {
    what: 'a capability chain that loops',
    run: () => {
      const b = regionInfo(false);
      b.set(u32(CAP), CAP + 4); // the first capability's next is itself
      return decodeRegionInfo(b, 'dev');
    },
    code: 'EINVAL',
    errno: 22,
    op: 'VFIO_DEVICE_GET_REGION_INFO',
    message: `capability chain broken at offset ${CAP}`,
  },
  {
    what: 'sparse mmap areas past argsz',
    run: () => {
      const b = regionInfo(true);
      b.set(u32(5), CAP + 8); // nr_areas 5 where one fits
      return decodeRegionInfo(b, 'dev');
    },
    code: 'EINVAL',
    errno: 22,
    op: 'VFIO_DEVICE_GET_REGION_INFO',
    message: 'sparse mmap areas run past argsz',
  },
  {
    what: 'a big-endian host',
    run: () => checkHostByteOrder(new Uint16Array(new Uint8Array([0, 1]).buffer)),
    code: 'ENOTSUP',
    errno: 95,
    op: 'load',
    message: 'little-endian host',
  },
  // Transitions without a path.
  {
    what: 'the FSM asked for a blocked arc',
    run: () => migrationPath(S.STOP_COPY, S.PRE_COPY, 7),
    code: 'EINVAL',
    errno: 22,
    op: 'vfio_mig_get_next_state STOP_COPY->PRE_COPY',
    message: 'STOP_COPY',
    hint: 'fsm-path',
  },
  {
    what: 'a sim asked for an unsupported state',
    run: () => createSimDevice({ flags: 1 }).setState(S.PRE_COPY),
    code: 'EINVAL',
    errno: 22,
    op: 'SET_STATE RUNNING->PRE_COPY',
    message: 'EINVAL (22)',
    hint: 'fsm-path',
  },
  {
    what: 'the kernel refusing an arc',
    run: () => new KernelDevice('/dev/vfio/devices/vfio0', 3, [], false, failingKernel('EINVAL')).setState(S.PRE_COPY),
    code: 'EINVAL',
    errno: 22,
    op: 'SET_STATE ?->PRE_COPY',
    message: 'SET_STATE ?->PRE_COPY on /dev/vfio/devices/vfio0',
    hint: 'fsm-path',
  },
  {
    what: 'resume data of another model',
    run: async () => {
      const dev = createSimDevice({ stateSize: 4096 });
      const s = await dev.setState(S.RESUMING);
      await s!.write(new Uint8Array(64).fill(0xa5));
      return dev.setState(S.STOP);
    },
    code: 'EINVAL',
    errno: 22,
    op: 'SET_STATE RESUMING->STOP',
    message: 'resume data rejected',
    hint: 'resume-rejected',
  },
  {
    what: 'a v1 device_state with an unknown bit',
    run: async () => (await openV1Bridge(createSimDevice({ stateSize: 4096 }))).write(0, u32(0x10)),
    code: 'EINVAL',
    errno: 22,
    op: /^v1\.write\(device_state\) /,
    message: 'unknown bits 0x10',
    hint: 'v1-states',
  },
  // Paths that are no VFIO node: a wrong argument.
  {
    what: 'a character device of another driver',
    run: () => openDevice('/dev/null'),
    code: 'ENOTTY',
    errno: 25,
    op: 'open',
    message: 'not a VFIO device',
    hint: 'not-a-device',
  },
  {
    what: 'a cdev whose BIND_IOMMUFD is ENOTTY',
    run: () => openCdev('/dev/vfio/devices/vfio0', '/dev/iommu', failingKernel('ENOTTY', VFIO_DEVICE_BIND_IOMMUFD)),
    code: 'ENOTTY',
    errno: 25,
    op: 'VFIO_DEVICE_BIND_IOMMUFD',
    message: 'not a VFIO device (cdev) node',
    hint: 'not-a-device',
  },
  {
    what: 'a device path that does not exist',
    run: () => openDevice('/nonexistent/vfio0'),
    code: 'ENOENT',
    errno: 2,
    op: 'open',
    message: 'no such device node',
  },
  {
    what: 'a v1 region answering a header read short',
    run: () =>
      saveV1({ size: 1 << 20, read: async () => new Uint8Array(2), write: async () => undefined }, () => undefined),
    code: 'EIO',
    errno: 5,
    op: 'v1.read(0)',
    message: 'short read: 2 of 4 bytes',
  },
  // Rejected options.
  {
    what: 'a sim with flags 2',
    run: () => createSimDevice({ flags: 2 }),
    code: 'EINVAL',
    errno: 22,
    op: 'createSimDevice',
    message: 'flags must be 1, 3, 5 or 7',
  },
  {
    what: 'an unknown conformance check',
    run: () => checkConformance(createSimDevice(), { only: ['bogus'] }),
    code: 'EINVAL',
    errno: 22,
    op: 'checkConformance',
    message: 'unknown check "bogus"',
  },
  {
    what: 'zero conformance cycles',
    run: () => checkConformance(createSimDevice(), { cycles: 0 }),
    code: 'EINVAL',
    errno: 22,
    op: 'checkConformance',
    message: 'cycles must be a whole number',
  },
  {
    what: 'a v1 bridge with a zero section',
    run: () => openV1Bridge(createSimDevice(), { sectionSize: 0 }),
    code: 'EINVAL',
    errno: 22,
    op: 'openV1Bridge',
    message: 'sectionSize must be a positive byte count',
  },
];

describe('errors: code, errno, op and hint for every failing input', () => {
  it.each(ROWS)('$what: $code', async (row) => {
    expect.assertions(4);
    const e = await Promise.resolve()
      .then(row.run)
      .then(
        () => null,
        (x: unknown) => x,
      );
    expect(isVfioError(e)).toBe(true);
    expect(e).toMatchObject({ name: 'VfioError', code: row.code, errno: row.errno, op: row.op });
    expect((e as Error).message).toContain(row.message);
    expect(hintOf(e)).toBe(row.hint);
  });
});

describe('errors: the CLI words a hint, never the message', () => {
  const err = (hint?: ErrorHint) => new VfioError('EINVAL', 'op', 'dev', 'why', hint ? { hint } : {});
  it.each([
    ['fsm-path', /\(`vfio-mig fsm` lists the valid transitions\)$/],
    ['v1-states', /\(v1 device_state values: 000 .*\)$/],
    ['resume-rejected', /\(the data does not fit this device: .*\)$/],
    ['not-a-device', /: why$/],
  ] as const)('%s', (hint, line) => {
    expect(errorLine(err(hint))).toMatch(line);
  });
  it('a message that reads like a hint gets none without the key', () => {
    expect(
      errorLine(new VfioError('EINVAL', 'SET_STATE STOP->RUNNING', 'dev', 'resume data rejected: bad magic')),
    ).toBe('vfio-mig: SET_STATE STOP->RUNNING on dev: EINVAL (22): resume data rejected: bad magic');
    expect(exitCodeFor(new VfioError('ENOTTY', 'open', 'dev', 'not a VFIO device'))).toBe(3);
    expect(exitCodeFor(new VfioError('ENOTTY', 'open', 'dev', 'anything', { hint: 'not-a-device' }))).toBe(2);
  });
  it('withHint keeps code, op, device, reason and details, and chains the original', () => {
    const e = VfioError.fromErrno(22, 'SET_STATE ?->STOP', 'dev', 'ioctl');
    const h = e.withHint('fsm-path');
    expect(h).toMatchObject({
      code: 'EINVAL',
      errno: 22,
      op: e.op,
      device: 'dev',
      syscall: 'ioctl',
      message: e.message,
      details: { hint: 'fsm-path' },
      cause: e,
    });
  });
});
