#!/usr/bin/env node
/** vfio-mig: the command line. Argument parsing and dispatch only; the work is in the library. */
import { Command, CommanderError, Option } from 'commander';
import { readFileSync, unlinkSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { migStateName } from '../v2/uapi.js';
import { holdsSession } from '../v2/fsm.js';
import type { V2Device } from '../v2/device.js';
import { EXIT, EXIT_HELP } from './exit-codes.js';
import { conformanceCommand, conformanceHelp, parseOnly } from './conformance.js';
import { fsmCommand } from './fsm.js';
import { infoCommand } from './info.js';
import { loadCommand } from './load.js';
import { DEVICE_HELP, openDevice, parseSize } from './open-device.js';
import { CliError, errorJson, errorLine, exitCodeFor, toJson } from './output.js';
import { saveCommand, unfinishedFiles } from './save.js';
import { envCommand, execCommand, serveCommand } from './serve.js';
import { SERVICE_SECTION_SIZE } from '../service/bridge-service.js';
import { stateCommand } from './state.js';
import { traceCommand } from './trace.js';

const version = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const openDevices = new Set<V2Device>();

/** Opens a device that an interrupt must close (and name the state of). */
async function trackedOpen(spec: string): Promise<V2Device> {
  const dev = await openDevice(spec);
  openDevices.add(dev);
  const close = dev.close.bind(dev);
  dev.close = () => {
    openDevices.delete(dev);
    return close();
  };
  return dev;
}

async function withDevice<T>(spec: string, fn: (d: V2Device) => Promise<T>): Promise<T> {
  const dev = await trackedOpen(spec);
  try {
    return await fn(dev);
  } finally {
    await dev.close();
  }
}

const sizeOpt = (v: string) => parseSize(v, '--section-size', 1 << 30, 1);
const intOpt = (name: string) => (v: string) => {
  if (!/^\d+$/.test(v)) throw new CliError(`vfio-mig: ${name} takes a whole number (got "${v}")`, EXIT.USAGE);
  return Number(v);
};
const sectionOption = (bytes = 1 << 20, shown = '1M') => new Option('--section-size <bytes>', 'v1 data section size (bridge window)').default(bytes, shown).argParser(sizeOpt);
const serviceSectionOption = () => sectionOption(SERVICE_SECTION_SIZE, '4M');

const jsonErrors = process.argv.includes('--json');

const program = new Command('vfio-mig')
  .description('Inspect VFIO migration devices, change their state, save and load their state, across the v1 region and v2 FSM protocols.')
  .version(version)
  .enablePositionalOptions()
  .showHelpAfterError(!jsonErrors)
  // Under --json the usage error is reported once, as the JSON error object (below).
  .configureOutput({ writeErr: (text) => void (jsonErrors || process.stderr.write(text)) })
  .exitOverride()
  .addHelpText('after', `\n${DEVICE_HELP}\n\n${EXIT_HELP}`);

program
  .command('info')
  .description('migration flags, state, stop-copy size, regions, and the v1 region the bridge would present')
  .argument('<device>')
  .addOption(sectionOption())
  .option('--json', 'machine-readable output (u64 values as decimal strings)')
  .addHelpText('after', '\nExample:\n  vfio-mig info sim:profile=mtty\n  vfio-mig info /dev/vfio/devices/vfio0 --json')
  .action(async (device: string, o) => withDevice(device, (d) => infoCommand(d, o)));

program
  .command('state')
  .description('print the state, or set it (v2 names, or v1 bits with --v1 through the bridge); prints the path taken')
  .argument('<device>')
  .argument('[state]', 'v2: STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P; v1 (--v1): 000..100 or STOP, RUNNING, SAVING, SAVING|RUNNING, RESUMING')
  .option('--v1', 'STATE is a v1 device_state, written through the bridge')
  .option('--reset', 'VFIO_DEVICE_RESET first (the way out of ERROR)')
  .option('--json', 'machine-readable output')
  .addHelpText('after', '\nExample:\n  vfio-mig state sim STOP_COPY        # RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY\n  vfio-mig state sim --v1 011\n  vfio-mig state /dev/vfio/devices/vfio0 --reset')
  .action(async (device: string, state: string | undefined, o) => {
    process.exitCode = await withDevice(device, (d) => stateCommand(d, state, o));
  });

program
  .command('save')
  .description('save the device state to a file or stdout (header, the device stream, SHA-256 trailer)')
  .argument('<device>')
  .requiredOption('-o, --output <file>', 'target file, or - for stdout')
  .addOption(new Option('--protocol <p>', 'v1: the legacy caller through the bridge; v2: native').choices(['v1', 'v2']).default('v2'))
  .option('--no-precopy', 'skip pre-copy and go straight to stop-copy')
  .option('--rounds <n>', 'at most this many pre-copy rounds', intOpt('--rounds'), 100)
  .addOption(new Option('--threshold <bytes>', 'leave pre-copy once pending data is below this').default(1n, '1').argParser((v) => BigInt(parseSize(v, '--threshold'))))
  .addOption(sectionOption())
  .option('--json', 'summary as JSON (on stderr when the data goes to stdout)')
  .addHelpText('after', '\nThe device is left in STOP. A file is written as .NAME.PID.tmp, synced and renamed when complete.\n\nExample:\n  vfio-mig save sim:size=64M -o state.vfio\n  vfio-mig save /dev/vfio/devices/vfio0 -o - | ssh dst vfio-mig load /dev/vfio/devices/vfio0 -i -')
  .action(async (device: string, o) => withDevice(device, (d) => saveCommand(d, o)));

program
  .command('load')
  .description('load device state from a file or stdin; checks header and checksum')
  .argument('<device>')
  .requiredOption('-i, --input <file>', 'state file, or - for stdin')
  .addOption(new Option('--protocol <p>', 'v1: the legacy caller through the bridge; v2: native').choices(['v1', 'v2']).default('v2'))
  .addOption(new Option('--final-state <s>', 'state after the load').choices(['running', 'stop']).default('running'))
  .addOption(sectionOption())
  .option('--json', 'machine-readable output')
  .addHelpText('after', '\nA file is verified whole before the device is touched. From stdin the checksum is checked at the end;\non a mismatch the resume is abandoned and the device reset (exit 5).\n\nExample:\n  vfio-mig load sim -i state.vfio\n  vfio-mig load sim --protocol v1 -i state.vfio')
  .action(async (device: string, o) => loadCommand(device, trackedOpen, o));

program
  .command('fsm')
  .description('the path a v2 transition takes (vfio_mig_get_next_state), or the whole table')
  .argument('[from]')
  .argument('[to]')
  .option('--flags <list>', 'migration flags: 1, 3, 5, 7 or STOP_COPY+P2P+PRE_COPY', '7')
  .option('--json', 'machine-readable output')
  .addHelpText('after', '\nExample:\n  vfio-mig fsm RUNNING STOP_COPY\n  vfio-mig fsm --flags STOP_COPY')
  .action((from: string | undefined, to: string | undefined, o) => {
    process.exitCode = fsmCommand(from, to, o);
  });

program
  .command('conformance')
  .description('check that a v2 migration driver keeps the uAPI (FSM, data_fd, PRECOPY_INFO, resume, reset) and that v1 callers work on it through the bridge')
  .argument('<device>')
  .option('--peer <device>', 'a second device of the same model to resume into (default: the device itself)')
  .option('--only <ids>', 'comma-separated check ids or group names', parseOnly)
  .option('--cycles <n>', 'save/resume/reset cycles of stress.cycles', intOpt('--cycles'), 20)
  .option('--json', 'one object: device, flags, kernel release, every check with its verdict and evidence')
  .addHelpText('after', conformanceHelp())
  .action(async (device: string, o) => {
    // A kernel device cannot be opened twice; a second sim of one spec is a second device.
    if (o.peer === device && !device.startsWith('sim')) throw new CliError(`vfio-mig conformance: --peer ${o.peer} is the device itself (leave --peer out to resume into the device)`, EXIT.USAGE);
    process.exitCode = await withDevice(device, async (d) => {
      if (!o.peer) return conformanceCommand(d, undefined, o);
      return withDevice(o.peer, (p) => conformanceCommand(d, p, o));
    });
  });

program
  .command('trace')
  .description('run a save through the v1 bridge and print each v1 access with the v2 operations it caused')
  .argument('<device>')
  .addOption(sectionOption())
  .option('--no-precopy', 'skip pre-copy')
  .addOption(new Option('--data-access <mode>', 'bulk: one read per chunk; qemu: 8-byte reads as QEMU without mmap').choices(['bulk', 'qemu']).default('bulk'))
  .option('--json', 'NDJSON, one object per access, then a summary')
  .addHelpText('after', '\nExample:\n  vfio-mig trace sim:profile=mtty\n  vfio-mig trace sim:size=8K --json')
  .action(async (device: string, o) => withDevice(device, (d) => traceCommand(d, o)));

program
  .command('exec')
  .description('run a v1-era VMM (QEMU 5.2-7.2) with the v1 interposer preloaded: every VFIO device it opens that has v2 migration gets a v1 migration region served by the bridge')
  .argument('<command...>', 'the command and its arguments (after --)')
  .option('--trace <file>', 'write each v1 access with the v2 operations it caused, and the quiesce group\'s moves (NDJSON)')
  .option('--socket <path>', 'the service socket (default: a private one under $TMPDIR)')
  .addOption(serviceSectionOption())
  .option('--sim <device>', 'serve every device with a fresh simulated DEVICE instead of the VMM\'s own (testing)')
  .passThroughOptions()
  .addHelpText('after', '\nThe exit status is COMMAND\'s (128+N when signal N ended it; 125 when exec itself failed, 127 when COMMAND was not found); SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded. The service ends with COMMAND.\n\nExample:\n  vfio-mig exec -- qemu-system-x86_64 -M pc -device vfio-pci,sysfsdev=/sys/bus/mdev/devices/UUID,x-enable-migration=on ...\n  vfio-mig exec --trace mig.ndjson -- qemu-system-x86_64 ...')
  .action(async (command: string[], o) => {
    process.exitCode = await execCommand(command, o);
  });

program
  .command('serve')
  .description('serve the v1 interposer of VMMs started by someone else (libvirt and the like); `vfio-mig env` prints what they need')
  .requiredOption('--socket <path>', 'where to listen (a Unix socket)')
  .option('--trace <file>', 'NDJSON trace of every v1 access and group move')
  .addOption(serviceSectionOption())
  .option('--sim <device>', 'serve every device with a fresh simulated DEVICE (testing)')
  .addHelpText('after', '\nRuns until SIGINT, SIGTERM or SIGHUP; devices left mid-session are reset to RUNNING.\n\nExample:\n  vfio-mig serve --socket /run/vfio-mig.sock &\n  env $(vfio-mig env --socket /run/vfio-mig.sock) qemu-system-x86_64 ...')
  .action(async (o) => serveCommand(o));

program
  .command('env')
  .description('print the environment (LD_PRELOAD, VFIO_MIG_SOCKET) a VMM needs to reach `vfio-mig serve`')
  .requiredOption('--socket <path>', 'the socket `vfio-mig serve` listens on')
  .addHelpText('after', '\nExample:\n  vfio-mig env --socket /run/vfio-mig.sock\n  env $(vfio-mig env --socket /run/vfio-mig.sock) qemu-system-x86_64 ...\n\nOther variables the interposer reads:\n  VFIO_MIG_REQUIRED=1     a device that cannot be bridged ends the VMM\n  VFIO_MIG_TIMEOUT_MS=N   longest wait for the service to answer one access (default 20000)')
  .action((o) => envCommand(o));

/**
 * Closes a device on an interrupt and says where it was left: a device
 * mid-session is reset, since its data session dies with this process.
 */
async function closeInterrupted(dev: V2Device): Promise<string> {
  let where: string;
  try {
    const state = await dev.getState();
    if (holdsSession(state)) {
      await dev.reset();
      where = 'reset to RUNNING';
    } else {
      where = `left in ${migStateName(state)}`;
    }
  } catch (e) {
    where = `left in an unknown state (${errorLine(e)})`;
  }
  await dev.close().catch(() => undefined);
  return `${dev.name} ${where}`;
}

// exec and serve replace these with their own (forwarding, or stopping the service).
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    // An interrupted save leaves no file under the target name.
    for (const f of unfinishedFiles) {
      try {
        unlinkSync(f);
      } catch {
        // already gone
      }
    }
    const exit = () => process.exit(128 + osConstants.signals[sig]);
    setTimeout(exit, 2000).unref();
    Promise.all([...openDevices].map(closeInterrupted)).then((states) => {
      process.stderr.write(`vfio-mig: interrupted by ${sig}${states.length ? `; ${states.join('; ')}` : ''}\n`);
      exit();
    }, exit);
  });
}

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    process.exitCode = e.exitCode === 0 || e.code === 'commander.helpDisplayed' || e.code === 'commander.version' ? EXIT.OK : EXIT.USAGE;
    if (process.exitCode === EXIT.USAGE && jsonErrors) process.stderr.write(`${toJson(errorJson(new CliError(e.message.replace(/^error: /, ''), EXIT.USAGE), EXIT.USAGE))}\n`);
  } else {
    process.exitCode = exitCodeFor(e);
    process.stderr.write(`${jsonErrors ? toJson(errorJson(e, process.exitCode)) : e instanceof CliError ? e.message : errorLine(e)}\n`);
  }
}
