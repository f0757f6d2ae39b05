// A legacy v1 caller moves device state between two v2 devices through the
// bridge: the v1 save loop on one side, the v1 resume loop on the other.
import { createSimDevice, loadV1, openV1Bridge, saveV1 } from 'vfio-mig-bridge';

export async function main(): Promise<{ bytes: number; same: boolean }> {
  const source = createSimDevice({ stateSize: 4 << 20, seed: 1 });
  const target = createSimDevice({ stateSize: 4 << 20, seed: 2 });

  // Each looks like a v1 migration region: header at 0, data section at 4096.
  const src = await openV1Bridge(source);
  const dst = await openV1Bridge(target);

  const chunks: Uint8Array[] = [];
  const saved = await saveV1(src, (chunk) => void chunks.push(chunk)); // 001 -> 011 -> 010 -> 000
  await loadV1(dst, chunks); // -> 100, data, -> 001

  return { bytes: saved.bytes, same: source.stateDigest() === target.stateDigest() };
}
