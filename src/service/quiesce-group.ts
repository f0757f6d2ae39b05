/**
 * One VMM's bridged devices as a quiesce group. v1 had no way to say "stop
 * your DMA but keep answering peer accesses", so a v1 VMM stops its devices
 * one at a time and a device still running may DMA into one already
 * stopped. v2 has RUNNING_P2P for exactly that (docs/interposer.md
 * "Quiesce group"), and QEMU 8's v2 caller moves every device to it first.
 * The group does the same behind the v1 callers' backs:
 *
 * - down: when a member leaves a running state (RUNNING, PRE_COPY) for a
 *   stopped one, every other P2P member still running is first moved to
 *   RUNNING_P2P / PRE_COPY_P2P ("parked");
 * - up: a P2P member asked to run again while another P2P member is still
 *   stopped is parked in the P2P form; when none is stopped any more, every
 *   parked member moves on to the state its caller asked for.
 *
 * A parked member reports the state its caller asked for, so v1
 * device_state reads stay what the VMM wrote.
 */
import { isVfioError } from '../errors.js';
import type { DataStream, V2Device } from '../v2/device.js';
import { ForwardingDevice } from '../v2/forwarding-device.js';
import { MigFlag, MigState, migStateName } from '../v2/uapi.js';

export interface GroupEvent {
  /** The member the group moved. */
  device: string;
  /** Why: the member whose transition caused it. */
  cause: string;
  v2: string[];
}

const runs = (s: MigState) => s === MigState.RUNNING || s === MigState.PRE_COPY;
const stopped = (s: MigState) => s === MigState.STOP || s === MigState.STOP_COPY || s === MigState.RESUMING;
const P2P_FORM: Partial<Record<MigState, MigState>> = {
  [MigState.RUNNING]: MigState.RUNNING_P2P,
  [MigState.PRE_COPY]: MigState.PRE_COPY_P2P,
};
const RUN_FORM: Partial<Record<MigState, MigState>> = {
  [MigState.RUNNING_P2P]: MigState.RUNNING,
  [MigState.PRE_COPY_P2P]: MigState.PRE_COPY,
};

export class QuiesceGroup {
  readonly #members = new Set<GroupMember>();
  #tail: Promise<unknown> = Promise.resolve();

  constructor(readonly onEvent?: (e: GroupEvent) => void) {}

  /** Adds a device; `state` is where it is now, `flags` its migration flags. */
  add(device: V2Device, flags: number, state: MigState): GroupMember {
    const m = new GroupMember(this, device, flags, state);
    this.#members.add(m);
    return m;
  }

  /** A member whose VMM connection is gone: the others may now be released. */
  async remove(m: GroupMember): Promise<void> {
    this.#members.delete(m);
    await this.#serial(() => this.#release(m.name));
  }

  get size(): number {
    return this.#members.size;
  }

  /** Group transitions run one at a time: each looks at every member's state. */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  /** @internal A member's own transition, with the group's moves before and after it. */
  step(m: GroupMember, target: MigState): Promise<DataStream | null> {
    return this.#serial(async () => {
      const from = m.visible;
      const others = [...this.#members].filter((o) => o !== m && o.p2p);
      if (runs(from) && stopped(target)) {
        for (const o of others) if (!o.parked && runs(o.real)) await this.#move(o, P2P_FORM[o.real]!, m.name, true);
      }
      const park = m.p2p && runs(target) && !runs(from) && others.length > 0;
      const realFrom = m.real;
      const stream = await m.move(park ? P2P_FORM[target]! : target, park);
      if (park)
        this.onEvent?.({
          device: m.name,
          cause: m.name,
          v2: [`SET_STATE ${migStateName(realFrom)}->${migStateName(m.real)} (held until every device is up)`],
        });
      if (runs(target)) await this.#release(m.name);
      return stream;
    });
  }

  /** Moves every parked member on to its running form once no P2P member is stopped. */
  async #release(cause: string): Promise<void> {
    const members = [...this.#members];
    if (members.some((o) => o.p2p && stopped(o.real))) return;
    for (const o of members) if (o.parked) await this.#move(o, RUN_FORM[o.real]!, cause, false);
  }

  async #move(o: GroupMember, to: MigState, cause: string, park: boolean): Promise<void> {
    const op = `SET_STATE ${migStateName(o.real)}->${migStateName(to)}`;
    try {
      const s = await o.move(to, park);
      if (s) await s.close(); // the P2P forms keep the session they had; a new one would be an error
      this.onEvent?.({ device: o.name, cause, v2: [op] });
    } catch (e) {
      // The member's own caller meets the failure at its next access (GET shows where it is).
      this.onEvent?.({ device: o.name, cause, v2: [`${op} ! ${isVfioError(e) ? e.code : String(e)}`] });
    }
  }
}

/** A group member as its bridge sees it: a V2Device whose P2P detours are hidden. */
export class GroupMember extends ForwardingDevice {
  #real: MigState;
  #parked = false;
  readonly p2p: boolean;

  constructor(
    readonly group: QuiesceGroup,
    inner: V2Device,
    readonly flags: number,
    state: MigState,
  ) {
    super(inner);
    this.#real = state;
    this.p2p = (flags & MigFlag.P2P) !== 0;
  }

  get real(): MigState {
    return this.#real;
  }
  get parked(): boolean {
    return this.#parked;
  }
  /** The state the member's caller asked for. */
  get visible(): MigState {
    return this.#parked ? RUN_FORM[this.#real]! : this.#real;
  }

  /** @internal The real transition, for the group. */
  async move(to: MigState, park: boolean): Promise<DataStream | null> {
    this.#parked = false;
    try {
      const s = await this.inner.setState(to);
      this.#real = to;
      this.#parked = park;
      return s;
    } catch (e) {
      this.#real = await this.inner.getState().catch(() => MigState.ERROR);
      throw e;
    }
  }

  override async getState(): Promise<MigState> {
    this.#real = await this.inner.getState();
    if (this.#parked && !RUN_FORM[this.#real]) this.#parked = false;
    return this.visible;
  }
  override setState(state: MigState): Promise<DataStream | null> {
    return this.group.step(this, state);
  }
  override async reset(): Promise<void> {
    await this.inner.reset();
    this.#real = MigState.RUNNING;
    this.#parked = false;
  }
}
