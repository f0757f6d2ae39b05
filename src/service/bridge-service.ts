/**
 * The bridge service: serves the LD_PRELOAD interposer (interposer/) of
 * one or more VMM processes. Each connection is one VFIO device fd of one
 * VMM; the service takes a copy of that fd (pidfd_getfd), opens a V1Bridge
 * over it whose data section is the interposer's shared memfd, and answers
 * the header accesses. All v1 -> v2 translation is the bridge's; this file
 * only carries accesses and owns the resources. docs/interposer.md.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { existsSync, lstatSync, rmSync } from 'node:fs';
import { dirname, resolve as resolvePath } from 'node:path';
import { VfioError, asVfioError } from '../errors.js';
import { openV1Bridge, type V1Bridge, type V1BridgeOptions, type V1TraceEvent } from '../bridge/v1-bridge.js';
import type { V2Device } from '../v2/device.js';
import { openKernelDevice } from '../v2/kernel/kernel-device.js';
import { holdsSession } from '../v2/fsm.js';
import { sysClose, sysMapShared, sysTakeFd, type SharedMapping } from '../v2/kernel/sys.js';
import { MigState, VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED, VFIO_REGION_TYPE_MIGRATION_DEPRECATED, encodeRegionInfo, migStateName } from '../v2/uapi.js';
import { GroupMember, QuiesceGroup, type GroupEvent } from './quiesce-group.js';
import { RequestReader, WireOp, encodeReply, vmw_bye, vmw_hello, vmw_hello_reply, vmw_region } from './wire.js';

/** What a VMM said about the device fd it wants bridged. */
export interface DeviceHello {
  pid: number;
  fd: number;
  numRegions: number;
  /** The device name the VMM asked its group for, if it came that way. */
  name: string;
}

export type ServiceTraceEvent =
  | ({ kind: 'access'; vmm: number; device: string } & V1TraceEvent)
  | ({ kind: 'group'; vmm: number } & GroupEvent);

export interface BridgeServiceOptions {
  socketPath: string;
  /** Data section per device (default 4 MiB: a quarter of the socket round trips of 1 MiB per MiB of state). */
  sectionSize?: number;
  /** Bridge options applied to every device. */
  bridge?: Pick<V1BridgeOptions, 'strict' | 'resetOnError'>;
  /**
   * Opens the device a VMM names. Default: a copy of the VMM's own fd
   * (pidfd_getfd), as a borrowed KernelDevice. Tests and benchmarks pass
   * simulated devices here.
   */
  openDevice?: (hello: DeviceHello) => Promise<V2Device>;
  trace?: (event: ServiceTraceEvent) => void;
  log?: (line: string) => void;
}

/** Per-device counts, for the log line at the end of a session. */
export interface SessionStats {
  device: string;
  vmm: number;
  headerAccesses: number;
  dataReads: bigint;
  dataWrites: bigint;
  dataMmaps: bigint;
}

export const SERVICE_SECTION_SIZE = 4 << 20;
const PAGE = 4096;
/** Where region `index` starts in a vfio-pci device fd (VFIO_PCI_INDEX_TO_OFFSET). */
const regionOffset = (index: number) => BigInt(index) << 40n;

export class BridgeService {
  readonly #server: Server;
  readonly #opts: BridgeServiceOptions;
  readonly #groups = new Map<number, QuiesceGroup>();
  readonly #sessions = new Set<DeviceSession>();
  /** Sessions that ended, newest last. */
  readonly finished: SessionStats[] = [];

  constructor(server: Server, opts: BridgeServiceOptions) {
    this.#server = server;
    this.#opts = opts;
    server.on('connection', (sock) => {
      const s = new DeviceSession(this, sock, opts);
      this.#sessions.add(s);
    });
  }

  get socketPath(): string {
    return this.#opts.socketPath;
  }

  /** @internal */
  groupFor(pid: number): QuiesceGroup {
    let g = this.#groups.get(pid);
    if (!g) {
      g = new QuiesceGroup((e) => this.#opts.trace?.({ kind: 'group', vmm: pid, ...e }));
      this.#groups.set(pid, g);
    }
    return g;
  }

  /** @internal */
  ended(s: DeviceSession, group: QuiesceGroup | null, pid: number): void {
    this.#sessions.delete(s);
    if (s.stats) this.finished.push(s.stats);
    if (group && group.size === 0) this.#groups.delete(pid);
  }

  /**
   * Stops listening, ends every session at once (devices left mid-session
   * are reset; the VMM's next access fails) and removes the socket.
   */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await Promise.all([...this.#sessions].map((s) => s.end('the service is stopping')));
    await closed; // resolves once the ended sessions' connections are gone
    rmSync(this.#opts.socketPath, { force: true });
  }
}

/** One bridged device fd of one VMM: one connection. */
class DeviceSession {
  readonly #svc: BridgeService;
  readonly #sock: Socket;
  readonly #opts: BridgeServiceOptions;
  readonly #reader = new RequestReader();
  #tail: Promise<unknown> = Promise.resolve();
  #hello: DeviceHello | null = null;
  #device: V2Device | null = null;
  #member: GroupMember | null = null;
  #group: QuiesceGroup | null = null;
  #mapping: SharedMapping | null = null;
  #bridge: V1Bridge | null = null;
  #ended: Promise<void> | null = null;
  stats: SessionStats | null = null;

  constructor(svc: BridgeService, sock: Socket, opts: BridgeServiceOptions) {
    this.#svc = svc;
    this.#sock = sock;
    this.#opts = opts;
    sock.on('data', (d) => {
      try {
        for (const rq of this.#reader.push(d)) this.#tail = this.#tail.then(() => this.#handle(rq.op, rq.offset, rq.length, rq.payload));
      } catch (e) {
        void this.end(`protocol error: ${(e as Error).message}`);
      }
    });
    sock.on('close', () => void this.end('the VMM closed the connection'));
    sock.on('error', () => undefined); // 'close' follows
  }

  get #sectionSize(): number {
    return this.#opts.sectionSize ?? SERVICE_SECTION_SIZE;
  }

  get #name(): string {
    return this.#device?.name ?? this.#hello?.name ?? 'device';
  }

  #log(line: string): void {
    this.#opts.log?.(line);
  }

  #reply(result: number, payload?: Uint8Array): void {
    if (!this.#sock.destroyed) this.#sock.write(encodeReply(result, payload));
  }

  async #handle(op: number, offset: bigint, length: number, payload: Uint8Array): Promise<void> {
    if (this.#ended) return;
    try {
      switch (op) {
        case WireOp.HELLO:
          return await this.#onHello(payload);
        case WireOp.SECTION:
          return await this.#onSection(payload);
        case WireOp.READ:
        case WireOp.WRITE: {
          const bridge = this.#bridge;
          if (!bridge) throw new VfioError('EPROTO', 'serve', this.#name, 'region access before the device was bridged');
          this.stats!.headerAccesses++;
          if (op === WireOp.READ) return this.#reply(0, await bridge.read(Number(offset), length));
          await bridge.write(Number(offset), payload.subarray(0, length));
          return this.#reply(0);
        }
        case WireOp.BYE: {
          const bye = vmw_bye.decode(payload);
          if (this.stats) Object.assign(this.stats, { dataReads: bye.data_reads, dataWrites: bye.data_writes, dataMmaps: bye.data_mmaps });
          this.#reply(0);
          void this.end('the VMM closed the device'); // runs once this request is off the queue
          return;
        }
        default:
          throw new VfioError('EPROTO', 'serve', this.#name, `unknown request ${op}`);
      }
    } catch (e) {
      const err = asVfioError(e, 'serve', this.#name);
      if (op === WireOp.HELLO || op === WireOp.SECTION) this.#log(`${this.#name} could not be bridged: ${err.message}`);
      this.#reply(-err.errno, new TextEncoder().encode(err.message));
    }
  }

  async #onHello(payload: Uint8Array): Promise<void> {
    const h = vmw_hello.decode(payload);
    const hello: DeviceHello = { pid: h.pid, fd: h.fd, numRegions: h.num_regions, name: new TextDecoder().decode(payload.subarray(vmw_hello.size)) || `device fd ${h.fd}` };
    this.#hello = hello;
    const refuse = (why: string) => {
      this.#log(`${hello.name} (VMM pid ${hello.pid}) is not bridged: ${why}`);
      this.#reply(0, Buffer.concat([vmw_hello_reply.encode({ bridged: 0 }), Buffer.from(why)]));
    };
    let dev: V2Device;
    try {
      dev = await (this.#opts.openDevice ?? openBorrowed)(hello);
    } catch (e) {
      const err = asVfioError(e, 'serve', hello.name);
      return refuse(err.code === 'ENOTTY' ? `no v2 migration support (${err.message})` : err.message);
    }
    this.#device = dev;
    const regions = dev.regions ? await dev.regions().catch(() => []) : [];
    if (regions.some((r) => r.type?.type === VFIO_REGION_TYPE_MIGRATION_DEPRECATED && r.type.subtype === VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED)) {
      await this.#closeDevice();
      return refuse('it already has a v1 migration region');
    }
    this.#reply(0, vmw_hello_reply.encode({ bridged: 1, section_size: BigInt(this.#sectionSize) }));
  }

  async #onSection(payload: Uint8Array): Promise<void> {
    const hello = this.#hello;
    const dev = this.#device;
    if (!hello || !dev || this.#bridge) throw new VfioError('EPROTO', 'serve', this.#name, 'SECTION out of order');
    const memfd = new DataView(payload.buffer, payload.byteOffset, 4).getInt32(0, true);
    const fd = sysTakeFd(hello.pid, memfd, 'serve: data section', dev.name);
    try {
      this.#mapping = sysMapShared(fd, this.#sectionSize, 'serve: data section', dev.name);
    } finally {
      sysClose(fd); // the mapping keeps the memory
    }
    const flags = await dev.migrationFlags();
    this.#group = this.#svc.groupFor(hello.pid);
    this.#member = this.#group.add(dev, flags, await dev.getState());
    const trace = this.#opts.trace;
    this.#bridge = await openV1Bridge(this.#member, {
      ...this.#opts.bridge,
      section: this.#mapping.bytes,
      dataOffset: PAGE,
      mmap: true,
      regionIndex: hello.numRegions,
      ...(trace ? { trace: (e: V1TraceEvent) => trace({ kind: 'access', vmm: hello.pid, device: dev.name, ...e }) } : {}),
    });
    const info = encodeRegionInfo({ ...this.#bridge.regionInfo, offset: regionOffset(hello.numRegions) });
    this.stats = { device: dev.name, vmm: hello.pid, headerAccesses: 0, dataReads: 0n, dataWrites: 0n, dataMmaps: 0n };
    this.#reply(
      0,
      Buffer.concat([
        vmw_region.encode({
          index: hello.numRegions,
          info_len: info.length,
          region_offset: regionOffset(hello.numRegions),
          region_size: BigInt(this.#bridge.size),
          data_offset: BigInt(this.#bridge.dataOffset),
          section_size: BigInt(this.#bridge.sectionSize),
        }),
        info,
      ]),
    );
    this.#log(`${dev.name} (VMM pid ${hello.pid}) bridged: v1 region ${hello.numRegions}, data section ${this.#bridge.sectionSize} bytes in shared memory`);
  }

  /**
   * Ends the session once: a device left in a session state (the VMM died
   * mid-migration) is reset to RUNNING, since nobody holds its data_fd any
   * more and mtty oopses on the next arc otherwise (docs/decisions.md #10).
   */
  end(why: string): Promise<void> {
    this.#ended ??= (async () => {
      await this.#tail.catch(() => undefined);
      this.#sock.destroy();
      if (this.#device) {
        try {
          await this.#bridge?.close();
          const state = await this.#device.getState();
          if (holdsSession(state) || state === MigState.ERROR) {
            await this.#device.reset();
            this.#log(`${this.#name}: ${why} while the device was in ${migStateName(state)}: reset to RUNNING`);
          } else if (state === MigState.RUNNING_P2P) {
            await this.#device.setState(MigState.RUNNING); // only the quiesce group put it there
          }
        } catch (e) {
          this.#log(`${this.#name}: ${why}; could not return the device to RUNNING: ${asVfioError(e, 'serve', this.#name).message}`);
        }
        if (this.#member && this.#group) await this.#group.remove(this.#member);
        await this.#closeDevice();
      }
      this.#mapping?.unmap();
      this.#mapping = null;
      if (this.stats) {
        const s = this.stats;
        this.#log(`${s.device} (VMM pid ${s.vmm}) done: ${why}; ${s.headerAccesses} header accesses over the socket, ${s.dataReads} data reads, ${s.dataWrites} data writes and ${s.dataMmaps} mmaps from shared memory`);
      }
      this.#svc.ended(this, this.#group, this.#hello?.pid ?? 0);
    })();
    return this.#ended;
  }

  async #closeDevice(): Promise<void> {
    const dev = this.#device;
    this.#device = null;
    this.#bridge = null;
    await dev?.close().catch(() => undefined);
  }
}

/** The VMM's own device fd, borrowed: closing it never resets the device. */
async function openBorrowed(hello: DeviceHello): Promise<V2Device> {
  let fd: number;
  try {
    fd = sysTakeFd(hello.pid, hello.fd, 'serve', hello.name);
  } catch (e) {
    const err = asVfioError(e, 'serve', hello.name);
    if (err.code !== 'EPERM' && err.code !== 'EACCES') throw err;
    throw new VfioError(err.code, err.op, hello.name, `${err.reason ?? ''}: the service needs ptrace access to the VMM (run it as root, or as the VMM's parent with vfio-mig exec)`, { cause: e });
  }
  return openKernelDevice({ fd, name: hello.name });
}

/** Whether something answers on the Unix socket at `path`. */
function answers(path: string): Promise<boolean> {
  return new Promise((done) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      done(true);
    });
    s.once('error', () => done(false));
  });
}

/** sockaddr_un holds 108 bytes with the NUL: a longer path would be cut short silently. */
export const MAX_SOCKET_PATH = 107;

/**
 * Listens on `socketPath`. A stale socket there (nobody answers) is
 * replaced; a live one is EADDRINUSE, anything else EEXIST.
 */
export async function startBridgeService(opts: BridgeServiceOptions): Promise<BridgeService> {
  if (!opts.socketPath) throw new VfioError('EINVAL', 'serve', '(empty)', 'the socket path is empty');
  if (Buffer.byteLength(opts.socketPath) > MAX_SOCKET_PATH) throw new VfioError('ENAMETOOLONG', 'serve', opts.socketPath, `a Unix socket path holds at most ${MAX_SOCKET_PATH} bytes`);
  const old = lstatSync(opts.socketPath, { throwIfNoEntry: false });
  if (old && !old.isSocket()) throw new VfioError('EEXIST', 'serve', opts.socketPath, 'exists and is not a socket');
  if (old && (await answers(opts.socketPath))) throw new VfioError('EADDRINUSE', 'serve', opts.socketPath, 'another service is listening there');
  if (!old && !existsSync(dirname(resolvePath(opts.socketPath)))) throw new VfioError('ENOENT', 'serve', opts.socketPath, `no directory ${dirname(resolvePath(opts.socketPath))}`);
  if (old) rmSync(opts.socketPath);
  const server = createServer();
  const svc = new BridgeService(server, opts);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new VfioError(e.code ?? 'EIO', 'listen', opts.socketPath, e.message, { cause: e })));
    server.listen(opts.socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return svc;
}
