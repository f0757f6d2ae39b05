/**
 * vfio-mig's commands: argument parsing and dispatch only; the work is in
 * the library. runCli runs one command line in a context (main.ts gives it
 * the process; tests give it buffers) and returns the exit code.
 */
import { Command, CommanderError, Option } from 'commander';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { EXIT, EXIT_HELP } from './exit-codes.js';
import type { conformanceCommand } from './conformance.js';
import type { CliContext } from './context.js';
import type { fsmCommand } from './fsm.js';
import type { infoCommand } from './info.js';
import type { CheckOptions, SnippetOptions } from './libvirt.js';
import type { LoadOptions } from './load.js';
import { EXEC_SERVICE } from './exec-inplace.js';
import { SYSTEM_SOCKET } from '../service/listen.js';
import { deviceKindOf } from '../v2/open-device.js';
import { DEVICE_HELP, parseDeviceArg, parseSize } from './open-device.js';
import { CliError, errorJson, errorLine, exitCodeFor, toJson } from './output.js';
import type { ExtractOptions } from './qemu-stream.js';
import type { SaveOptions } from './save.js';
import type { envCommand, execCommand, ExecServiceOptions, ServeCliOptions } from './serve.js';
import { SERVICE_SECTION_SIZE } from '../service/limits.js';
import type { stateCommand } from './state.js';
import type { traceCommand } from './trace.js';

/**
 * Each command's module is loaded when that command runs: `exec`, on a
 * VMM's start path, does not wait for the conformance checks or the stream
 * layouts to load. Two commands' help texts need their modules: those are
 * loaded first when the command line names them (helpModules).
 */
const load = {
  conformance: () => import('./conformance.js'),
  fsm: () => import('./fsm.js'),
  info: () => import('./info.js'),
  libvirt: () => import('./libvirt.js'),
  load: () => import('./load.js'),
  qemuStream: () => import('./qemu-stream.js'),
  save: () => import('./save.js'),
  serve: () => import('./serve.js'),
  state: () => import('./state.js'),
  trace: () => import('./trace.js'),
};
type HelpModules = {
  conformance?: Awaited<ReturnType<typeof load.conformance>>;
  qemuStream?: Awaited<ReturnType<typeof load.qemuStream>>;
};
/** The modules whose text is part of a command's --help, when the command line may ask for it. */
async function helpModules(argv: readonly string[]): Promise<HelpModules> {
  return {
    ...(argv.includes('conformance') ? { conformance: await load.conformance() } : {}),
    ...(argv.includes('qemu-stream') ? { qemuStream: await load.qemuStream() } : {}),
  };
}

const version = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

// What commander parses for each command (it hands the action handlers `any`): the options the command takes.
type InfoOptions = Parameters<typeof infoCommand>[2];
type StateOptions = Parameters<typeof stateCommand>[3];
type FsmOptions = Parameters<typeof fsmCommand>[3];
type ConformanceOptions = Parameters<typeof conformanceCommand>[3] & { peer?: string };
type TraceOptions = Parameters<typeof traceCommand>[2];
type ExecOptions = Parameters<typeof execCommand>[2];
type EnvOptions = Parameters<typeof envCommand>[1];
interface JsonOption {
  json?: boolean;
}

const sizeOpt = (v: string) => parseSize(v, '--section-size', 1 << 30, 1);
/** A whole number from `min` to `max` (both safe integers): anything else is a usage error naming the option. */
const intOpt = (name: string, min: number, max: number) => (v: string) => {
  const n = /^\d+$/.test(v) ? Number(v) : NaN;
  if (!(n >= min && n <= max))
    throw new CliError(`vfio-mig: ${name} takes a whole number from ${min} to ${max} (got "${v}")`, EXIT.USAGE);
  return n;
};
/** A socket mode in octal (0660, 660): anything else is a usage error. */
const modeOpt = (v: string) => {
  if (!/^0?[0-7]{3}$/.test(v))
    throw new CliError(`vfio-mig serve: --mode takes permission bits in octal, 000 to 0777 (got "${v}")`, EXIT.USAGE);
  return parseInt(v, 8);
};
/** A group the system knows (looked up as the system does, with getent), by name or number. */
const groupOpt = (v: string) => {
  const r = spawnSync('getent', ['group', v], { encoding: 'utf8' });
  const gid = r.status === 0 ? Number(r.stdout.split(':')[2]) : NaN;
  // getent reads a number past 32 bits modulo 2^32 (4294967296 is root's group): the gid must be the one asked for.
  if (!Number.isInteger(gid) || (/^\d+$/.test(v) && Number(v) !== gid))
    throw new CliError(`vfio-mig serve: --group ${v}: no such group`, EXIT.USAGE);
  return gid;
};
const MAX_ROUNDS = 1_000_000;
const MAX_CYCLES = 1_000_000_000;
/** A file option: an empty value would name the current directory (or nothing) and is refused before anything is written. */
const pathOpt = (name: string) => (v: string) => {
  if (v === '') throw new CliError(`vfio-mig: ${name} needs a file name, or - (got an empty string)`, EXIT.USAGE);
  return v;
};
const sectionOption = (bytes = 1 << 20, shown = '1M', what = 'v1 data section size (bridge window)') =>
  new Option('--section-size <bytes>', what).default(bytes, shown).argParser(sizeOpt);
const serviceSectionOption = () => sectionOption(SERVICE_SECTION_SIZE, '4M');
/** save and load: the section is the bridge's, so it means something only with --protocol v1. */
const v1SectionOption = () =>
  sectionOption(undefined, undefined, 'v1 data section size (bridge window); only with --protocol v1');
const DEVICE_ARG =
  'sim, sim:key=value,..., /dev/vfio/devices/vfioN or /dev/vfio/N:NAME (vfio-mig --help lists the sim options)';

/** --section-size given with --protocol v2 would be ignored: refuse it instead. */
function sectionSizeOnlyWithV1(cmd: Command, name: string): void {
  if (cmd.getOptionValue('protocol') !== 'v1' && cmd.getOptionValueSource('sectionSize') === 'cli') {
    throw new CliError(
      `vfio-mig ${name}: --section-size applies only to --protocol v1 (the bridge's data section); v2 has none`,
      EXIT.USAGE,
    );
  }
}

/** The command tree for one run: its output, devices and exit code go through `ctx` and `exit`. */
function buildProgram(ctx: CliContext, exit: (code: number) => void, help: HelpModules): Command {
  const program = new Command('vfio-mig')
    .description(
      'Inspect VFIO migration devices, change their state, save and load their state, across the v1 region and v2 FSM protocols.',
    )
    .version(version)
    .enablePositionalOptions()
    // Under --json the usage error is reported once, as the JSON error object (runCli).
    .configureOutput({
      writeOut: (text) => void ctx.stdout.write(text),
      writeErr: (text) => void (ctx.json || ctx.stderr.write(text)),
      // commander's defaults, on the run's streams (undefined: its own 80 columns)
      getOutHelpWidth: () => (ctx.stdout.isTTY ? ctx.stdout.columns : undefined) as number,
      getErrHelpWidth: () => (ctx.stderr.isTTY ? ctx.stderr.columns : undefined) as number,
    })
    .exitOverride()
    .addHelpText('after', `\n${DEVICE_HELP}\n\n${EXIT_HELP}`);

  program
    .command('info')
    .description('migration flags, state, stop-copy size, regions, and the v1 region the bridge would present')
    .argument('<device>', DEVICE_ARG)
    .addOption(sectionOption())
    .option('--digest', 'a simulated device: hash its state (SHA-256) whatever its size, about 1 s per GiB')
    .option('--json', 'machine-readable output (u64 values as decimal strings)')
    .addHelpText(
      'after',
      "\nA simulated device's state digest is computed when its stop-copy size is at most 256 MiB, above that\nonly with --digest (JSON: stateDigest null).\n\nExample:\n  vfio-mig info sim:profile=mtty\n  vfio-mig info /dev/vfio/devices/vfio0 --json",
    )
    .action(async (device: string, o: InfoOptions) => {
      const { infoCommand } = await load.info();
      await ctx.withDevice(device, (d) => infoCommand(ctx, d, o));
    });

  program
    .command('state')
    .description(
      'print the state, or set it (v2 names, or v1 bits with --v1 through the bridge); prints the path taken',
    )
    .argument('<device>', DEVICE_ARG)
    .argument(
      '[state]',
      'v2: STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P; v1 (--v1): 000..100 or STOP, RUNNING, SAVING, SAVING|RUNNING, RESUMING',
    )
    .option('--v1', 'STATE is a v1 device_state, written through the bridge')
    .option('--reset', 'VFIO_DEVICE_RESET first (the way out of ERROR)')
    .option('--json', 'machine-readable output')
    .addHelpText(
      'after',
      '\nExample:\n  vfio-mig state sim STOP_COPY        # RUNNING -> RUNNING_P2P -> STOP -> STOP_COPY\n  vfio-mig state sim --v1 011\n  vfio-mig state /dev/vfio/devices/vfio0 --reset',
    )
    .action(async (device: string, state: string | undefined, o: StateOptions) => {
      const { stateCommand } = await load.state();
      exit(await ctx.withDevice(device, (d) => stateCommand(ctx, d, state, o)));
    });

  program
    .command('save')
    .description('save the device state to a file or stdout (header, the device stream, SHA-256 trailer)')
    .argument('<device>', DEVICE_ARG)
    .requiredOption('-o, --output <file>', 'target file, or - for stdout (required)', pathOpt('-o/--output'))
    .addOption(
      new Option('--protocol <p>', 'v1: the legacy caller through the bridge; v2: native')
        .choices(['v1', 'v2'])
        .default('v2'),
    )
    .option('--no-precopy', 'skip pre-copy and go straight to stop-copy')
    .option(
      '--rounds <n>',
      `at most this many pre-copy rounds (1 to ${MAX_ROUNDS}; --no-precopy for none)`,
      intOpt('--rounds', 1, MAX_ROUNDS),
      100,
    )
    // 0 could never be reached (pending is never below 0): pre-copy would always run out of rounds.
    .addOption(
      new Option(
        '--threshold <bytes>',
        'leave pre-copy once pending data is below this (at least 1: 1 waits until nothing is pending)',
      )
        .default(1n, '1')
        .argParser((v) => BigInt(parseSize(v, '--threshold', Number.MAX_SAFE_INTEGER, 1))),
    )
    .addOption(v1SectionOption())
    .option('--json', 'summary as JSON (on stderr when the data goes to stdout)')
    .addHelpText(
      'after',
      '\nThe device is left in STOP. A file is written as .NAME.PID.tmp, synced and renamed when complete;\na new file is mode 0600, a replaced one keeps its mode (and, as root, its owner). -o - is refused when\nstdout is /dev/null (a closed stdout is reopened there): -o /dev/null discards the state on purpose.\n\nExample:\n  vfio-mig save sim:size=64M -o state.vfio\n  vfio-mig save /dev/vfio/devices/vfio0 -o - | ssh dst vfio-mig load /dev/vfio/devices/vfio0 -i -',
    )
    .action(async (device: string, o: SaveOptions, cmd: Command) => {
      sectionSizeOnlyWithV1(cmd, 'save');
      const { saveCommand } = await load.save();
      await ctx.withDevice(device, (d) => saveCommand(ctx, d, o));
    });

  program
    .command('load')
    .description('load device state from a file or stdin; checks header and checksum')
    .argument('<device>', DEVICE_ARG)
    .requiredOption(
      '-i, --input <file>',
      'state file, or - for stdin; a FIFO, device or socket is read as a stream, as stdin is (required)',
      pathOpt('-i/--input'),
    )
    .addOption(
      new Option('--protocol <p>', 'v1: the legacy caller through the bridge; v2: native')
        .choices(['v1', 'v2'])
        .default('v2'),
    )
    .addOption(new Option('--final-state <s>', 'state after the load').choices(['running', 'stop']).default('running'))
    .addOption(v1SectionOption())
    .option('--json', 'machine-readable output')
    .addHelpText(
      'after',
      '\nA file is verified whole before the device is touched (header, byte counts, checksum, nothing after\nthe trailer). Stdin, a FIFO, a device or a socket can be read only once: the same checks run as it\nstreams, and on a mismatch the resume is abandoned and the device reset (exit 5).\n\nExample:\n  vfio-mig load sim -i state.vfio\n  vfio-mig load sim --protocol v1 -i state.vfio',
    )
    .action(async (device: string, o: LoadOptions, cmd: Command) => {
      sectionSizeOnlyWithV1(cmd, 'load');
      const { loadCommand } = await load.load();
      await loadCommand(ctx, device, o);
    });

  program
    .command('fsm')
    .description('the path a v2 transition takes (vfio_mig_get_next_state), or the whole table')
    .argument(
      '[from]',
      'the v2 state to start from (STOP, RUNNING, STOP_COPY, RESUMING, RUNNING_P2P, PRE_COPY, PRE_COPY_P2P); with neither, the whole table',
    )
    .argument('[to]', 'the v2 state to reach')
    .option('--flags <list>', 'migration flags: 1, 3, 5, 7 or STOP_COPY+P2P+PRE_COPY', '7')
    .option('--json', 'machine-readable output')
    .addHelpText('after', '\nExample:\n  vfio-mig fsm RUNNING STOP_COPY\n  vfio-mig fsm --flags STOP_COPY')
    .action(async (from: string | undefined, to: string | undefined, o: FsmOptions) => {
      const { fsmCommand } = await load.fsm();
      exit(fsmCommand(ctx, from, to, o));
    });

  program
    .command('conformance')
    .description(
      'check that a v2 migration driver keeps the uAPI (FSM, data_fd, PRECOPY_INFO, resume, reset) and that v1 callers work on it through the bridge',
    )
    .argument('<device>', DEVICE_ARG)
    .option('--peer <device>', 'a second device of the same model to resume into (default: the device itself)')
    .option('--only <ids>', 'comma-separated check ids or group names', (v: string) => help.conformance!.parseOnly(v))
    .option(
      '--cycles <n>',
      `save/resume/reset cycles of stress.cycles (1 to ${MAX_CYCLES})`,
      intOpt('--cycles', 1, MAX_CYCLES),
      20,
    )
    .option('--json', 'one object: device, flags, kernel release, every check with its verdict and evidence')
    .addHelpText('after', () => help.conformance?.conformanceHelp() ?? '')
    .action(async (device: string, o: ConformanceOptions) => {
      // A kernel device cannot be opened twice; a second sim of one spec is a second device.
      if (o.peer === device && deviceKindOf(parseDeviceArg(device)) === 'kernel')
        throw new CliError(
          `vfio-mig conformance: --peer ${o.peer} is the device itself (leave --peer out to resume into the device)`,
          EXIT.USAGE,
        );
      const { conformanceCommand } = await load.conformance();
      exit(
        await ctx.withDevice(device, async (d) => {
          if (!o.peer) return conformanceCommand(ctx, d, undefined, o);
          return ctx.withDevice(o.peer, (p) => conformanceCommand(ctx, d, p, o));
        }),
      );
    });

  program
    .command('trace')
    .description('run a save through the v1 bridge and print each v1 access with the v2 operations it caused')
    .argument('<device>', DEVICE_ARG)
    .addOption(sectionOption())
    .option('--no-precopy', 'skip pre-copy')
    .addOption(
      new Option('--data-access <mode>', 'bulk: one read per chunk; qemu: 8-byte reads as QEMU without mmap')
        .choices(['bulk', 'qemu'])
        .default('bulk'),
    )
    .option('--json', 'NDJSON, one object per access, then a summary')
    .addHelpText('after', '\nExample:\n  vfio-mig trace sim:profile=mtty\n  vfio-mig trace sim:size=8K --json')
    .action(async (device: string, o: TraceOptions) => {
      const { traceCommand } = await load.trace();
      await ctx.withDevice(device, (d) => traceCommand(ctx, d, o));
    });

  program
    .command('exec')
    .description(
      'run a v1-era VMM (QEMU 5.2-7.2) with the v1 interposer preloaded: every VFIO device it opens that has v2 migration gets a v1 migration region served by the bridge',
    )
    .argument('<command...>', 'the command and its arguments (after --)')
    .option(
      '--trace <file>',
      "write each v1 access with the v2 operations it caused, and the quiesce group's moves (NDJSON)",
    )
    .option('--socket <path>', 'the service socket (default: a private one under $TMPDIR)')
    .addOption(serviceSectionOption())
    .option('--sim <device>', "serve every device with a fresh simulated DEVICE instead of the VMM's own (testing)")
    .passThroughOptions()
    .addHelpText(
      'after',
      "\nexec replaces itself with COMMAND (execve): the process you started is COMMAND, so its signals,\nits exit status and a kill reach COMMAND itself. The bridge service runs beside it in its own\nsession and ends when COMMAND's process ends. exec's own failures: 125, 127 when COMMAND is not\nfound, 126 when it cannot be run.\n\nExample:\n  vfio-mig exec -- qemu-system-x86_64 -M pc -device vfio-pci,sysfsdev=/sys/bus/mdev/devices/UUID,x-enable-migration=on ...\n  vfio-mig exec --trace mig.ndjson -- qemu-system-x86_64 ...",
    )
    .action(async (command: string[], o: ExecOptions) => {
      const { execCommand } = await load.serve();
      exit(await execCommand(ctx, command, o));
    });

  // exec's service, started beside COMMAND (serve.ts): not for people.
  program
    .command(EXEC_SERVICE, { hidden: true })
    .requiredOption('--pid <pid>', 'the process to watch', intOpt('--pid', 1, 0x7fffffff))
    .requiredOption('--socket <path>', 'where to listen')
    .option('--given', 'the socket path came from exec --socket')
    .option('--remove-dir <dir>', "exec's private socket dir, removed at the end")
    .option('--trace <file>', 'NDJSON trace')
    .addOption(serviceSectionOption())
    .option('--sim <device>', 'simulated devices')
    .action(async (o: ExecServiceOptions) => {
      const { execServiceCommand } = await load.serve();
      exit(await execServiceCommand(ctx, o));
    });

  program
    .command('serve')
    .description(
      'serve the v1 interposer of VMMs started by someone else (libvirt and the like); `vfio-mig env` prints what they need',
    )
    .option('--socket <path>', 'where to listen (a Unix socket; required unless systemd passes one)')
    .option('--mode <octal>', 'permission bits of the socket (default 0600: only its owner may connect)', modeOpt)
    .option(
      '--group <name>',
      'group of the socket, whose VMMs may then connect (mode 0660 unless --mode says otherwise; e.g. kvm)',
      groupOpt,
    )
    .option('--trace <file>', 'NDJSON trace of every v1 access and group move')
    .addOption(serviceSectionOption())
    .option('--sim <device>', 'serve every device with a fresh simulated DEVICE (testing)')
    .addHelpText(
      'after',
      '\nRuns until SIGINT, SIGTERM or SIGHUP; devices left mid-session are reset to RUNNING. A client is served\nonly devices its own process holds open (docs/interposer.md, "Trust model"). Under systemd socket\nactivation (LISTEN_FDS) the passed socket is used: see contrib/systemd/.\n\nExample:\n  vfio-mig serve --socket /run/vfio-mig.sock &\n  vfio-mig serve --socket /run/vfio-mig/bridge.sock --group kvm &\n  env $(vfio-mig env --socket /run/vfio-mig.sock) qemu-system-x86_64 ...',
    )
    .action(async (o: ServeCliOptions) => {
      const { serveCommand } = await load.serve();
      await serveCommand(ctx, o);
    });

  program
    .command('env')
    .description('print the environment (LD_PRELOAD, VFIO_MIG_SOCKET) a VMM needs to reach `vfio-mig serve`')
    .requiredOption('--socket <path>', 'the socket `vfio-mig serve` listens on')
    .addHelpText(
      'after',
      '\nExample:\n  vfio-mig env --socket /run/vfio-mig.sock\n  env $(vfio-mig env --socket /run/vfio-mig.sock) qemu-system-x86_64 ...\n\nOther variables the interposer reads:\n  VFIO_MIG_REQUIRED=1     a device that cannot be bridged ends the VMM\n  VFIO_MIG_TIMEOUT_MS=N   longest wait for the service to answer one access (default 20000)',
    )
    .action(async (o: EnvOptions) => {
      const { envCommand } = await load.serve();
      envCommand(ctx, o);
    });
  const lv = program
    .command('libvirt')
    .description(
      "libvirt-managed QEMU: the domain XML that bridges a device, and whether a running domain's QEMU is bridged",
    )
    .addHelpText(
      'after',
      '\nREADME, "Using it with libvirt", has both recipes: vfio-mig serve + <qemu:env> (preferred), or\nvfio-mig exec as the <emulator>.',
    );
  lv.command('snippet')
    .description(
      "print the domain XML for DEVICE: its <hostdev>, x-enable-migration, and the recipe's <qemu:env> or <emulator>",
    )
    .argument('<device>', 'an mdev (UUID or /sys/bus/mdev/devices/UUID) or a PCI function (0000:01:00.0)')
    .addOption(
      new Option('--recipe <recipe>', 'serve: vfio-mig serve + <qemu:env>; emulator: vfio-mig exec as the <emulator>')
        .choices(['serve', 'emulator'])
        .default('serve'),
    )
    .option('--socket <path>', `the socket vfio-mig serve listens on (serve recipe; default ${SYSTEM_SOCKET})`)
    .option(
      '--wrapper <path>',
      'where the <emulator> wrapper script goes (emulator recipe; default /usr/local/bin/qemu-vfio-mig)',
    )
    .option('--qemu <path>', 'the QEMU the wrapper runs (emulator recipe; default /usr/bin/qemu-system-x86_64)')
    .addHelpText(
      'after',
      '\nThe <qemu:commandline> element needs xmlns:qemu on <domain> (the snippet says so). -global turns\nmigration on for every vfio-pci device of the domain; README shows <qemu:override> for one device.\n\nExample:\n  vfio-mig libvirt snippet 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001\n  vfio-mig libvirt snippet /sys/bus/mdev/devices/UUID --recipe emulator',
    )
    .action(async (device: string, o: SnippetOptions) => (await load.libvirt()).snippetCommand(ctx, device, o));
  lv.command('check')
    .description(
      "whether the QEMU of a running domain (or a process) has devices bridged, as the service's sessions say",
    )
    .argument('<domain-or-pid>', 'a running domain of qemu:///system (or of your session), or a pid')
    .option(
      '--socket <path>',
      `the service's socket (default: QEMU's VFIO_MIG_SOCKET when its environment is readable, else ${SYSTEM_SOCKET})`,
    )
    .option('--json', 'machine-readable output')
    .addHelpText(
      'after',
      '\nAsks the service (a read-only status query): exit 0 when it has a session of that process, 1 when not,\n2 when it cannot tell (no such domain or process, no service at the socket), 4 when the socket is closed to you.\nThe service shows a user only the sessions of VMMs running as that user; root sees all.\n\nExample:\n  vfio-mig libvirt check vm1\n  vfio-mig libvirt check $(cat /run/libvirt/qemu/vm1.pid) --socket /run/vfio-mig/bridge.sock',
    )
    .action(async (target: string, o: CheckOptions) => exit(await (await load.libvirt()).checkCommand(ctx, target, o)));
  const qs = program
    .command('qemu-stream')
    .description(
      "QEMU migration stream files: list their sections and VFIO devices, extract a VFIO device's state as a state file, compare two",
    )
    .addHelpText('after', () => help.qemuStream?.QEMU_STREAM_HELP ?? '');
  qs.command('list')
    .description(
      'sections (type, id, idstr, instance, version, offset, bytes) and, per VFIO device, its config and the state it carried in each phase',
    )
    .argument('<file>', 'a migration stream file')
    .option('--json', 'machine-readable output')
    .addHelpText('after', '\nExample:\n  vfio-mig qemu-stream list vm.mig\n  vfio-mig qemu-stream list vm.mig --json')
    .action(async (file: string, o: JsonOption) => (await load.qemuStream()).qemuStreamList(ctx, file, o));
  qs.command('extract')
    .description(
      "a VFIO device's state (its DEV_DATA_STATE payloads: the bytes of its data_fd) as a state file `vfio-mig load` takes",
    )
    .argument('<file>', 'a migration stream file')
    .requiredOption(
      '--device <idstr>',
      'the VFIO device, as `list` names it (0000:00:03.0/vfio) or without /vfio (required)',
    )
    .requiredOption(
      '-o, --output <file>',
      'the state file to write, or - for stdout (required)',
      pathOpt('-o/--output'),
    )
    .addOption(
      new Option(
        '--saved-with <p>',
        'the caller that saved it, when the stream does not show it: v1 (QEMU 7.2 through the bridge) or v2 (QEMU 8+)',
      ).choices(['v1', 'v2']),
    )
    .option('--json', 'summary as JSON')
    .addHelpText(
      'after',
      "\nThe state file records the protocol the stream shows (an empty DEV_DATA_STATE record: QEMU 7.2's v1 loop;\nDEV_INIT_DATA_SENT: a v2 caller), else --saved-with, else v2; and as source flags the least the\nstream proves: STOP_COPY, with PRE_COPY when state was sent before the stop. `vfio-mig load` uses neither.\n\nExample:\n  vfio-mig qemu-stream extract vm.mig --device 0000:00:03.0 -o dev.vfio\n  vfio-mig load /dev/vfio/devices/vfio1 -i dev.vfio",
    )
    .action(async (file: string, o: ExtractOptions) => (await load.qemuStream()).qemuStreamExtract(ctx, file, o));
  qs.command('diff')
    .description(
      "what differs between two streams, device by device: present in one only, version, size, contents; RAMBlocks; a VFIO device's per-phase state and config",
    )
    .argument('<a>', 'a migration stream file')
    .argument('<b>', 'another')
    .option('--json', 'machine-readable output')
    .addHelpText(
      'after',
      '\nExit status 0 whether or not they differ (--json: "identical").\n\nExample:\n  vfio-mig qemu-stream diff from-7.2.mig from-10.mig',
    )
    .action(async (a: string, b: string, o: JsonOption) => (await load.qemuStream()).qemuStreamDiff(ctx, a, b, o));

  // After a usage error, one line pointing at the help instead of the whole help (commander adds "Did you mean ...?").
  if (!ctx.json) {
    program.showHelpAfterError('(see vfio-mig --help)');
    for (const c of program.commands) c.showHelpAfterError(`(see vfio-mig ${c.name()} --help)`);
    for (const c of qs.commands) c.showHelpAfterError(`(see vfio-mig qemu-stream ${c.name()} --help)`);
    for (const c of lv.commands) c.showHelpAfterError(`(see vfio-mig libvirt ${c.name()} --help)`);
  }
  return program;
}

/** `(see vfio-mig save --help)` for the command the line runs, `(see vfio-mig --help)` without one. */
function helpPointer(program: Command, argv: readonly string[]): string {
  const first = argv.find((a) => !a.startsWith('-'));
  const cmd = program.commands.find((c) => c.name() === first && first !== 'help');
  return `(see vfio-mig ${cmd ? `${cmd.name()} ` : ''}--help)`;
}

/** Runs one command line (the arguments after `vfio-mig`) and returns its exit code. */
export async function runCli(argv: readonly string[], ctx: CliContext): Promise<number> {
  let code: number = EXIT.OK;
  const program = buildProgram(ctx, (c) => (code = c), await helpModules(argv));
  // `help NAME` naming no command: commander prints the whole help; report it as `vfio-mig NAME` is, in one line.
  const name = argv[0] === 'help' ? argv[1] : undefined;
  const args =
    name && !name.startsWith('-') && name !== 'help' && !program.commands.some((c) => c.name() === name)
      ? argv.slice(1)
      : argv;
  try {
    await program.parseAsync([...args], { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      code =
        e.exitCode === 0 || e.code === 'commander.helpDisplayed' || e.code === 'commander.version'
          ? EXIT.OK
          : EXIT.USAGE;
      if (code === EXIT.USAGE && ctx.json)
        ctx.stderr.write(
          `${toJson(errorJson(new CliError(e.message.replace(/^error: /, ''), EXIT.USAGE), EXIT.USAGE))}\n`,
        );
    } else {
      code = exitCodeFor(e);
      // Our own usage errors end with the pointer commander's have (showHelpAfterError above).
      const pointer = code === EXIT.USAGE ? `\n${helpPointer(program, argv)}` : '';
      ctx.stderr.write(
        `${ctx.json ? toJson(errorJson(e, code)) : `${e instanceof CliError ? e.message : errorLine(e)}${pointer}`}\n`,
      );
    }
  }
  return code;
}
