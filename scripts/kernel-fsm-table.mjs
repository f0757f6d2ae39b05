#!/usr/bin/env node
// Compiles vfio_mig_get_next_state() out of a Linux source tree and prints
// what it returns for every (flags, cur, new): the FSM test's expectation,
// taken from the kernel itself rather than from our port of it.
// Usage: node scripts/kernel-fsm-table.mjs LINUX_SRC_DIR > table.txt
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

export function kernelFsmTable(srcDir) {
  const main = readFileSync(join(srcDir, 'drivers/vfio/vfio_main.c'), 'utf8');
  const uapi = readFileSync(join(srcDir, 'include/uapi/linux/vfio.h'), 'utf8');
  const start = main.indexOf('int vfio_mig_get_next_state(struct vfio_device *device,');
  const end = main.indexOf('EXPORT_SYMBOL_GPL(vfio_mig_get_next_state);');
  if (start < 0 || end < 0) throw new Error('vfio_mig_get_next_state not found in vfio_main.c');
  const fn = main.slice(start, end);
  const enumMatch = uapi.match(/enum vfio_device_mig_state \{[^}]*\};/);
  const flagDefs = uapi.split('\n').filter((l) => /^#define VFIO_MIGRATION_(STOP_COPY|P2P|PRE_COPY)\s/.test(l));
  if (!enumMatch || flagDefs.length !== 3) throw new Error('migration enum or flags not found in uapi vfio.h');
  const c = `#include <stdio.h>
#include <errno.h>
typedef unsigned char u8;
#define WARN_ON(x) (x)
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
${flagDefs.join('\n')}
${enumMatch[0]}
struct vfio_device { unsigned int migration_flags; };
${fn}
int main(void) {
  unsigned int flags[] = { 1, 3, 5, 7 };
  for (int f = 0; f < 4; f++)
    for (int cur = 0; cur < 8; cur++)
      for (int nw = 0; nw < 8; nw++) {
        struct vfio_device d = { flags[f] };
        enum vfio_device_mig_state next = VFIO_DEVICE_STATE_ERROR;
        int ret = vfio_mig_get_next_state(&d, cur, nw, &next);
        if (ret == -EINVAL) printf("%u %d %d EINVAL\\n", flags[f], cur, nw);
        else printf("%u %d %d %d\\n", flags[f], cur, nw, (int)next);
        fflush(stdout);
      }
  return 0;
}
`;
  const dir = mkdtempSync(join(tmpdir(), 'kfsm-'));
  try {
    writeFileSync(join(dir, 'fsm.c'), c);
    const cc = spawnSync(process.env.CC ?? 'cc', ['-O0', '-o', join(dir, 'fsm'), join(dir, 'fsm.c')], {
      encoding: 'utf8',
    });
    if (cc.status !== 0) throw new Error(`compiling vfio_mig_get_next_state failed:\n${cc.stderr}`);
    // A timeout catches a skip loop that never ends (the pre-fix kernel bug).
    const run = spawnSync(join(dir, 'fsm'), { encoding: 'utf8', timeout: 10_000 });
    if (run.status !== 0)
      throw new Error(
        `kernel FSM harness did not finish (${run.signal ?? run.status}); last line: ${run.stdout.trim().split('\n').pop()}`,
      );
    return run.stdout;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  if (!process.argv[2]) {
    console.error('usage: kernel-fsm-table.mjs LINUX_SRC_DIR');
    process.exit(2);
  }
  process.stdout.write(kernelFsmTable(process.argv[2]));
}
