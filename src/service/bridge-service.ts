/**
 * The bridge service: serves the LD_PRELOAD interposer (interposer/) of
 * one or more VMM processes. Each connection is one VFIO device fd of one
 * VMM; the service takes a copy of that fd from the connected process
 * (pidfd_getfd), opens a V1Bridge over it whose data section is the
 * interposer's sealed memfd, and answers the header accesses. All v1 -> v2
 * translation is the bridge's; this file only carries accesses, owns the
 * resources and holds each client to its own process and its bounds
 * (docs/interposer.md#trust-model).
 */
import type { Server, Socket } from 'node:net';
import { rmSync } from 'node:fs';
import { VfioError, asVfioError, errnoOf } from '../errors.js';
import { openV1Bridge, type V1Bridge, type V1BridgeOptions, type V1TraceEvent } from '../bridge/v1-bridge.js';
import type { V2Device } from '../v2/device.js';
import { openKernelDevice } from '../v2/kernel/kernel-device.js';
import { holdsSession } from '../v2/fsm.js';
import { linuxPeerSys, type PeerSysCalls, type SharedMapping } from '../v2/kernel/sys.js';
import {
  MigState,
  PAGE,
  VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED,
  VFIO_REGION_TYPE_MIGRATION_DEPRECATED,
  encodeRegionInfo,
  migStateName,
} from '../v2/uapi.js';
import { listenUnix } from './listen.js';
import {
  ConnectionCount,
  DEFAULT_LIMITS,
  SERVICE_SECTION_SIZE,
  escapeForLog,
  limitedLog,
  sharedLog,
  type ServiceLimits,
} from './limits.js';
import { Peer } from './peer.js';
import { GroupMember, QuiesceGroup, type GroupEvent } from './quiesce-group.js';
import {
  MAX_REQUEST_PAYLOAD,
  RequestReader,
  WireOp,
  encodeReply,
  vmw_bye,
  vmw_hello,
  vmw_hello_reply,
  vmw_region,
  vmw_request,
  type StatusReply,
  type WireRequest,
} from './wire.js';

/** What a VMM said about the device fd it wants bridged. */
export interface DeviceHello {
  /** The connected process (SO_PEERCRED); HELLO's own pid field must equal it. */
  pid: number;
  /** The device fd in that process. */
  fd: number;
  numRegions: number;
  /** The device name the VMM asked its group for, escaped for logs. */
  name: string;
}

export type ServiceTraceEvent =
  ({ kind: 'access'; vmm: number; device: string } & V1TraceEvent) | ({ kind: 'group'; vmm: number } & GroupEvent);

export interface BridgeServiceOptions {
  socketPath: string;
  /**
   * Serve on this already listening socket (systemd's LISTEN_FDS) instead
   * of creating `socketPath`; the service then never removes the socket.
   */
  listenFd?: number;
  /** Permission bits of the socket it creates (default 0600: only its owner). */
  socketMode?: number;
  /** Group of the socket it creates (a gid): with socketMode 0660, that group's VMMs may connect. */
  socketGid?: number;
  /** Data section per device (default 4 MiB: a quarter of the socket round trips of 1 MiB per MiB of state). */
  sectionSize?: number;
  /** Bridge options applied to every device. */
  bridge?: Pick<V1BridgeOptions, 'strict' | 'resetOnError'>;
  /**
   * Opens the device a VMM names. Default: a copy of the connected
   * process's own fd, checked to be a VFIO device, as a borrowed
   * KernelDevice. Tests and benchmarks pass simulated devices here.
   */
  openDevice?: (hello: DeviceHello, peer: Peer) => Promise<V2Device>;
  limits?: Partial<ServiceLimits>;
  /** The syscalls done on peers (default: the real ones). */
  sys?: PeerSysCalls;
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

export { MAX_SOCKET_PATH } from './listen.js';
export { SERVICE_SECTION_SIZE };
/** Request bytes a connection may have sent ahead of what is served: two of the largest requests. */
const MAX_UNPARSED = 2 * (vmw_request.size + MAX_REQUEST_PAYLOAD);
/** How many ended sessions `finished` keeps. */
const FINISHED_KEPT = 64;
/** Where region `index` starts in a vfio-pci device fd (VFIO_PCI_INDEX_TO_OFFSET). */
const regionOffset = (index: number) => BigInt(index) << 40n;

/** The descriptor under a connected Node socket (Unix sockets on Linux always have one). */
function socketFd(sock: Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0)
    throw new VfioError('EBADF', 'serve: connect', 'socket', 'the connection has no descriptor');
  return fd;
}

export class BridgeService {
  readonly #server: Server;
  readonly #opts: BridgeServiceOptions;
  readonly #limits: ServiceLimits;
  readonly #count: ConnectionCount;
  readonly #groups = new Map<string, QuiesceGroup>();
  readonly #sessions = new Set<DeviceSession>();
  readonly #sweep: NodeJS.Timeout;
  /** @internal Lines caused by clients not bridged (refusals, broken protocol): shared, so a flood cannot flood the log. */
  readonly misbehaved: (line: string) => void;
  /** The last FINISHED_KEPT sessions that ended, newest last. */
  readonly finished: SessionStats[] = [];

  constructor(server: Server, opts: BridgeServiceOptions) {
    this.#server = server;
    this.#opts = opts;
    this.#limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.#count = new ConnectionCount(this.#limits);
    this.misbehaved = sharedLog(opts.log);
    server.on('connection', (sock) => this.#accept(sock));
    // A session whose process exited while a child kept its socket ends within a second.
    this.#sweep = setInterval(() => this.#sessions.forEach((s) => s.checkPeer()), 1000);
    this.#sweep.unref();
  }

  get socketPath(): string {
    return this.#opts.socketPath;
  }

  /** Sessions now open. */
  get sessions(): number {
    return this.#sessions.size;
  }

  /** Quiesce groups held: one per VMM process with a bridged device, none once its last session ended. */
  get quiesceGroups(): number {
    return this.#groups.size;
  }

  /**
   * What STATUS answers `uid`: the bridged sessions of its own VMMs (all of
   * them for root), never another user's (docs/interposer.md#trust-model).
   */
  statusFor(uid: number): StatusReply {
    const sessions: StatusReply['sessions'] = [];
    for (const s of this.#sessions) {
      const v = s.view();
      if (v && (uid === 0 || v.uid === uid)) sessions.push(v);
    }
    return { uid, sessions };
  }

  #accept(sock: Socket): void {
    let peer: Peer;
    try {
      peer = Peer.ofSocket(socketFd(sock), this.#opts.sys ?? linuxPeerSys);
    } catch (e) {
      sock.destroy();
      return this.misbehaved(asVfioError(e, 'serve: connect', 'socket').message);
    }
    const full = this.#count.admit(peer.creds.uid, peer.identity);
    if (full) {
      peer.close();
      // Told why (the interposer shows it), not just cut off.
      const why = `the bridge service is full: ${full}`;
      sock.end(encodeReply(-errnoOf('EAGAIN'), new TextEncoder().encode(why)));
      sock.setTimeout(1000, () => sock.destroy());
      return this.misbehaved(`a connection from pid ${peer.pid} (uid ${peer.creds.uid}) was refused: ${full}`);
    }
    this.#sessions.add(new DeviceSession(this, sock, peer, this.#opts, this.#limits));
  }

  /** @internal The quiesce group of one VMM process: keyed by the connected process (pid and start time), never by what a message says. */
  groupFor(peer: Peer): QuiesceGroup {
    let g = this.#groups.get(peer.identity);
    if (!g) {
      g = new QuiesceGroup((e) => this.#opts.trace?.({ kind: 'group', vmm: peer.pid, ...e }));
      this.#groups.set(peer.identity, g);
    }
    return g;
  }

  /** @internal */
  ended(s: DeviceSession, group: QuiesceGroup | null, peer: Peer): void {
    this.#sessions.delete(s);
    this.#count.release(peer.creds.uid, peer.identity);
    if (s.stats) {
      this.finished.push(s.stats);
      if (this.finished.length > FINISHED_KEPT) this.finished.shift();
    }
    if (group && group.size === 0) this.#groups.delete(peer.identity);
  }

  /**
   * Stops listening, ends every session at once (devices left mid-session
   * are reset; the VMM's next access fails) and removes the socket it made.
   */
  async close(): Promise<void> {
    clearInterval(this.#sweep);
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    await Promise.all([...this.#sessions].map((s) => s.end('the service is stopping')));
    await closed; // resolves once the ended sessions' connections are gone
    if (this.#opts.listenFd === undefined) rmSync(this.#opts.socketPath, { force: true });
  }
}

/** A request that breaks the protocol: answered once, then the connection is closed. */
class ProtocolError extends VfioError {}

/** One bridged device fd of one VMM: one connection. */
class DeviceSession {
  readonly #svc: BridgeService;
  readonly #sock: Socket;
  readonly #peer: Peer;
  readonly #opts: BridgeServiceOptions;
  readonly #limits: ServiceLimits;
  readonly #reader = new RequestReader();
  readonly #bridgedLog: (line: string) => void;
  #tail: Promise<unknown> = Promise.resolve();
  #queued = 0;
  #readError: string | null = null;
  #helloTimer: NodeJS.Timeout | null;
  #hello: DeviceHello | null = null;
  #device: V2Device | null = null;
  #member: GroupMember | null = null;
  #group: QuiesceGroup | null = null;
  #mapping: SharedMapping | null = null;
  #bridge: V1Bridge | null = null;
  #ended: Promise<void> | null = null;
  stats: SessionStats | null = null;

  constructor(svc: BridgeService, sock: Socket, peer: Peer, opts: BridgeServiceOptions, limits: ServiceLimits) {
    this.#svc = svc;
    this.#sock = sock;
    this.#peer = peer;
    this.#opts = opts;
    this.#limits = limits;
    this.#bridgedLog = limitedLog(opts.log, limits.logLinesPerConnection, () => this.#who);
    this.#helloTimer = setTimeout(
      () => void this.end(`not bridged within ${limits.helloTimeoutMs} ms`),
      limits.helloTimeoutMs,
    );
    sock.on('data', (d) => this.#received(d));
    sock.on('drain', () => this.#pump());
    sock.on('close', () => void this.end('the VMM closed the connection'));
    sock.on('error', () => undefined); // 'close' follows
  }

  get #sectionSize(): number {
    return this.#opts.sectionSize ?? SERVICE_SECTION_SIZE;
  }

  get #name(): string {
    return this.#device?.name ?? this.#hello?.name ?? `connection from pid ${this.#peer.pid}`;
  }

  get #who(): string {
    return `"${this.#name}" (VMM pid ${this.#peer.pid})`;
  }

  /** Until the session is bridged its lines share the service's limit; after, the connection's own. */
  #log(line: string): void {
    if (this.stats) this.#bridgedLog(line);
    else this.#svc.misbehaved(line);
  }

  /** @internal The session as STATUS shows it, once bridged. */
  view(): StatusReply['sessions'][number] | null {
    if (!this.stats || this.#ended) return null;
    return {
      vmm: this.stats.vmm,
      uid: this.#peer.creds.uid,
      device: this.stats.device,
      headerAccesses: this.stats.headerAccesses,
    };
  }

  /** @internal Ends the session once the process that connected is gone, whoever still holds its socket. */
  checkPeer(): void {
    if (!this.#ended && !this.#peer.alive()) void this.end(`VMM process ${this.#peer.pid} exited`);
  }

  #received(data: Uint8Array): void {
    this.#reader.push(data);
    this.#pump();
  }

  /**
   * Takes requests off the byte stream only while fewer than
   * maxQueuedRequests wait and the peer takes its replies; otherwise they
   * stay unparsed and the socket is paused (back-pressure), so what a
   * client can make the service hold is bounded.
   */
  #pump(): void {
    while (
      !this.#ended &&
      !this.#readError &&
      this.#queued < this.#limits.maxQueuedRequests &&
      this.#sock.writableLength <= this.#limits.maxUnsentBytes
    ) {
      let rq: WireRequest | null;
      try {
        rq = this.#reader.next();
      } catch (e) {
        this.#readError = (e as Error).message;
        this.#enqueue(() => this.#refuseStream(this.#readError!));
        break;
      }
      if (!rq) break;
      const request = rq;
      this.#enqueue(() => this.#handle(request));
    }
    if (this.#ended) return;
    const full =
      this.#reader.buffered > MAX_UNPARSED ||
      this.#queued >= this.#limits.maxQueuedRequests ||
      this.#sock.writableLength > this.#limits.maxUnsentBytes;
    if (full && !this.#sock.isPaused()) this.#sock.pause();
    else if (!full && this.#sock.isPaused()) this.#sock.resume();
  }

  #enqueue(work: () => Promise<void>): void {
    this.#queued++;
    this.#tail = this.#tail.then(async () => {
      await work();
      this.#queued--;
      this.#pump();
    });
  }

  /** A request header no request may have: answered once, then the connection ends. */
  async #refuseStream(why: string): Promise<void> {
    const err = new VfioError('EPROTO', 'serve', this.#name, why);
    this.#reply(-err.errno, new TextEncoder().encode(err.message));
    this.#log(`${this.#who}: protocol error: ${err.message}`);
    void this.end(err.message);
  }

  #reply(result: number, payload?: Uint8Array): void {
    if (!this.#sock.writableEnded) this.#sock.write(encodeReply(result, payload));
  }

  async #handle({ op, offset, length, payload }: WireRequest): Promise<void> {
    if (this.#ended) return;
    if (!this.#peer.alive()) return void this.end(`VMM process ${this.#peer.pid} exited`);
    try {
      switch (op) {
        case WireOp.HELLO:
          return await this.#onHello(payload);
        case WireOp.SECTION:
          return await this.#onSection(payload);
        case WireOp.READ:
        case WireOp.WRITE: {
          const bridge = this.#bridge;
          if (!bridge)
            throw new ProtocolError('EPROTO', 'serve', this.#name, 'region access before the device was bridged');
          this.stats!.headerAccesses++;
          // Region offsets are at most the region's size: a larger one is refused exactly, not rounded to a double.
          if (offset > BigInt(Number.MAX_SAFE_INTEGER))
            throw new VfioError(
              'EINVAL',
              `serve: ${op === WireOp.READ ? 'READ' : 'WRITE'}`,
              this.#name,
              `offset ${offset} is past the region`,
            );
          if (op === WireOp.READ) {
            if (length > MAX_REQUEST_PAYLOAD)
              throw new VfioError(
                'EINVAL',
                'serve: READ',
                this.#name,
                `a read of ${length} bytes (the socket carries header accesses, at most ${MAX_REQUEST_PAYLOAD})`,
              );
            return this.#reply(0, await bridge.read(Number(offset), length));
          }
          if (length !== payload.length)
            throw new ProtocolError(
              'EPROTO',
              'serve: WRITE',
              this.#name,
              `a write of ${length} bytes carries ${payload.length}`,
            );
          await bridge.write(Number(offset), payload);
          return this.#reply(0);
        }
        case WireOp.BYE: {
          if (!this.#hello) throw new ProtocolError('EPROTO', 'serve: BYE', this.#name, 'BYE before HELLO');
          if (payload.length < vmw_bye.size)
            throw new ProtocolError(
              'EPROTO',
              'serve: BYE',
              this.#name,
              `BYE of ${payload.length} bytes (${vmw_bye.size} expected)`,
            );
          const bye = vmw_bye.decode(payload);
          if (this.stats)
            Object.assign(this.stats, {
              dataReads: bye.data_reads,
              dataWrites: bye.data_writes,
              dataMmaps: bye.data_mmaps,
            });
          this.#reply(0);
          void this.end('the VMM closed the device'); // runs once this request is off the queue
          return;
        }
        case WireOp.STATUS: {
          if (this.#hello)
            throw new ProtocolError(
              'EPROTO',
              'serve: STATUS',
              this.#name,
              'STATUS on a device connection (a status query is alone on its connection)',
            );
          this.#reply(0, Buffer.from(JSON.stringify(this.#svc.statusFor(this.#peer.creds.uid))));
          void this.end('status query answered');
          return;
        }
        default:
          throw new ProtocolError('EPROTO', 'serve', this.#name, `unknown request ${op}`);
      }
    } catch (e) {
      const err = asVfioError(e, 'serve', this.#name);
      this.#reply(-err.errno, new TextEncoder().encode(err.message));
      // A refused HELLO or SECTION, or a broken protocol, ends the connection: nothing of it is kept.
      if (e instanceof ProtocolError || op === WireOp.HELLO || op === WireOp.SECTION) {
        this.#log(`${this.#who} ${this.#bridge ? 'protocol error' : 'could not be bridged'}: ${err.message}`);
        void this.end(err.message);
      }
    }
  }

  async #onHello(payload: Uint8Array): Promise<void> {
    if (this.#hello)
      throw new ProtocolError(
        'EPROTO',
        'serve: HELLO',
        this.#name,
        'a second HELLO on one connection (one connection serves one device)',
      );
    if (payload.length < vmw_hello.size)
      throw new ProtocolError(
        'EPROTO',
        'serve: HELLO',
        this.#name,
        `HELLO of ${payload.length} bytes (at least ${vmw_hello.size})`,
      );
    const h = vmw_hello.decode(payload);
    const name = escapeForLog(new TextDecoder().decode(payload.subarray(vmw_hello.size))) || `device fd ${h.fd}`;
    const hello: DeviceHello = { pid: this.#peer.pid, fd: h.fd, numRegions: h.num_regions, name };
    this.#hello = hello;
    if (h.pid !== this.#peer.pid)
      throw new ProtocolError(
        'EPERM',
        'serve: HELLO',
        name,
        `HELLO names process ${h.pid}, but the connected process is ${this.#peer.pid}: a client is served only its own devices`,
      );
    const refuse = (why: string) => {
      this.#log(`${this.#who} is not bridged: ${why}`);
      this.#reply(0, Buffer.concat([vmw_hello_reply.encode({ bridged: 0 }), Buffer.from(why)]));
      void this.end(`not bridged: ${why}`);
    };
    let dev: V2Device;
    try {
      dev = await (this.#opts.openDevice ?? openBorrowed)(hello, this.#peer);
    } catch (e) {
      const err = asVfioError(e, 'serve', hello.name);
      return refuse(err.code === 'ENOTTY' ? `no v2 migration support (${err.message})` : err.message);
    }
    this.#device = dev;
    const regions = dev.regions ? await dev.regions().catch(() => []) : [];
    if (
      regions.some(
        (r) =>
          r.type?.type === VFIO_REGION_TYPE_MIGRATION_DEPRECATED &&
          r.type.subtype === VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED,
      )
    ) {
      await this.#closeDevice();
      return refuse('it already has a v1 migration region');
    }
    await this.#recover(dev);
    this.#reply(0, vmw_hello_reply.encode({ bridged: 1, section_size: BigInt(this.#sectionSize) }));
  }

  /**
   * A VMM that has just opened its device finds it mid-session only when
   * the session's holder died (a service killed mid-migration): nobody
   * holds that data_fd any more, so the device is reset and bridged in the
   * same run (docs/decisions.md #10), with one line saying so.
   */
  async #recover(dev: V2Device): Promise<void> {
    const state = await dev.getState();
    if (holdsSession(state)) {
      await dev.reset();
      this.#log(
        `${this.#who}: found in ${migStateName(state)} with no session holder (a service that died mid-migration?): reset to RUNNING`,
      );
    } else if (state === MigState.RUNNING_P2P) {
      await dev.setState(MigState.RUNNING);
      this.#log(`${this.#who}: found in RUNNING_P2P, left there by a service that died: moved to RUNNING`);
    }
  }

  async #onSection(payload: Uint8Array): Promise<void> {
    const hello = this.#hello;
    const dev = this.#device;
    if (!hello || !dev || this.#bridge)
      throw new ProtocolError('EPROTO', 'serve: SECTION', this.#name, 'SECTION out of order');
    if (payload.length < 4)
      throw new ProtocolError(
        'EPROTO',
        'serve: SECTION',
        this.#name,
        `SECTION of ${payload.length} bytes (4 expected)`,
      );
    const memfd = new DataView(payload.buffer, payload.byteOffset, 4).getInt32(0, true);
    this.#mapping = this.#peer.mapSection(memfd, this.#sectionSize, dev.name);
    const flags = await dev.migrationFlags();
    const state = await dev.getState();
    // Looked up and joined in one step: a group whose last member left during an await is
    // deleted, and joining it then would split the process's devices over two groups.
    this.#group = this.#svc.groupFor(this.#peer);
    this.#member = this.#group.add(dev, flags, state);
    const trace = this.#opts.trace;
    this.#bridge = await openV1Bridge(this.#member, {
      ...this.#opts.bridge,
      section: this.#mapping.bytes,
      dataOffset: PAGE,
      mmap: true,
      regionIndex: hello.numRegions,
      ...(trace
        ? { trace: (e: V1TraceEvent) => trace({ kind: 'access', vmm: hello.pid, device: dev.name, ...e }) }
        : {}),
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
    if (this.#helloTimer) clearTimeout(this.#helloTimer);
    this.#helloTimer = null;
    this.#log(
      `${this.#who} bridged: v1 region ${hello.numRegions}, data section ${this.#bridge.sectionSize} bytes in shared memory`,
    );
  }

  /**
   * Ends the session once: a device left in a session state (the VMM died
   * mid-migration) is reset to RUNNING, since nobody holds its data_fd any
   * more and mtty oopses on the next arc otherwise (docs/decisions.md #10).
   */
  end(why: string): Promise<void> {
    this.#ended ??= (async () => {
      if (this.#helloTimer) clearTimeout(this.#helloTimer);
      // Nothing more is read; what was answered is still flushed (a refusal's reason, BYE's reply).
      this.#sock.pause();
      this.#sock.end();
      await this.#tail.catch(() => undefined);
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
          this.#log(
            `${this.#name}: ${why}; could not return the device to RUNNING: ${asVfioError(e, 'serve', this.#name).message}`,
          );
        }
        if (this.#member && this.#group) await this.#group.remove(this.#member);
        await this.#closeDevice();
      }
      this.#mapping?.unmap();
      this.#mapping = null;
      this.#peer.close();
      this.#sock.destroy(); // a peer that does not read its last reply keeps no descriptor here
      if (this.stats) {
        const s = this.stats;
        this.#log(
          `${s.device} (VMM pid ${s.vmm}) done: ${why}; ${s.headerAccesses} header accesses over the socket, ${s.dataReads} data reads, ${s.dataWrites} data writes and ${s.dataMmaps} mmaps from shared memory`,
        );
      }
      this.#svc.ended(this, this.#group, this.#peer);
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
async function openBorrowed(hello: DeviceHello, peer: Peer): Promise<V2Device> {
  return openKernelDevice({ fd: peer.takeDeviceFd(hello.fd, 'serve', hello.name), name: hello.name });
}

/**
 * Listens on `socketPath` (or the socket systemd passed as `listenFd`) and
 * serves every VMM that connects. A stale socket at the path (nobody
 * answers) is replaced; a live one is EADDRINUSE, anything else EEXIST.
 */
export async function startBridgeService(opts: BridgeServiceOptions): Promise<BridgeService> {
  const server = await listenUnix(opts);
  return new BridgeService(server, opts);
}
