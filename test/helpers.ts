import {
  chunkPipe,
  drainStream,
  ForwardingDevice,
  saveV2 as saveV2Native,
  loadV2 as loadV2Native,
  type DataStream,
  type MigState,
  type V2Device,
} from '../src/index.js';

/** Reads a saving stream until the temporary end (ENOMSG or 0 in pre-copy) or the real end. */
export async function drain(stream: DataStream, chunk = 65536): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  await drainStream(stream, (c) => void parts.push(c), chunk);
  return Buffer.concat(parts);
}

/** Native v2 save into one buffer. */
export async function saveV2(dev: V2Device, precopy = true): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  await saveV2Native(dev, (c) => void parts.push(c), { precopy });
  return Buffer.concat(parts);
}

/** Native v2 load of one buffer. */
export async function loadV2(dev: V2Device, data: Uint8Array): Promise<void> {
  await loadV2Native(dev, [data]);
}

export { chunkPipe };

/** The device, with every data stream it hands out remembered. */
export class Tracked extends ForwardingDevice {
  readonly streams: DataStream[] = [];
  override async setState(s: MigState): Promise<DataStream | null> {
    const st = await this.inner.setState(s);
    if (st) this.streams.push(st);
    return st;
  }
}

export function tracked(dev: V2Device): Tracked {
  return new Tracked(dev);
}
