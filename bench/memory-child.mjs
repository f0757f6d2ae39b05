// One save in a process of its own, for its peak RSS: node bench/memory-child.mjs PATH MiB
// prints {"path", "mib", "hwmKiB"} (VmHWM from /proc/self/status: the most resident memory the process ever had).
import { readFileSync } from 'node:fs';
import { createSimDevice } from '../dist/index.js';
import { MiB, savePaths, verifyingSink } from './callers.mjs';

const [path, mib] = [process.argv[2], Number(process.argv[3])];
if (!savePaths[path] || !(mib > 0)) throw new Error('usage: memory-child.mjs raw|bulk|mmap|mmap4 MiB');
const model = { stateSize: mib * MiB, dirtyRatio: 0 };
const a = createSimDevice({ ...model, seed: 1 });
const b = createSimDevice({ ...model, seed: 2 });
const out = await verifyingSink(b);
await savePaths[path](a, out.sink);
await out.finish();
if (b.content.seed !== a.content.seed) throw new Error(`${path}: the resumed state differs`);
const hwm = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]);
console.log(JSON.stringify({ path, mib, hwmKiB: hwm }));
