/**
 * What a new-user trial found in save/load state-file handling. Each test
 * failed before its fix.
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  closeSync,
  existsSync,
  openSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, cliCopyIn, pipeCli, runCli, runInProcess } from './run-cli.js';
import { spawnCli, textOf } from './spawn-cli.js';
import { formatBytes } from '../../src/cli/output.js';
import { STREAMED } from '../../src/cli/state-file.js';

const dir = mkdtempSync(join(tmpdir(), 'vfio-mig-stateio-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
chmodSync(dir, 0o755); // the unprivileged user of the permission tests reaches its files

const isRoot = process.getuid?.() === 0;
const hasRunuser = spawnSync('runuser', ['--help']).status === 0;

/** The built CLI as an unprivileged user: nobody when run as root (root passes every permission check), else this user. */
function runUnprivileged(args: string[]): { code: number | null; stderr: string } {
  // nobody runs a copy in `dir`: the checkout itself may be where nobody cannot search.
  const cmd = isRoot
    ? ['runuser', '-u', 'nobody', '--', process.execPath, cliCopyIn(dir), ...args]
    : [process.execPath, CLI, ...args];
  const r = spawnSync(cmd[0]!, cmd.slice(1), { cwd: dir, encoding: 'utf8' });
  return { code: r.status, stderr: r.stderr };
}

describe('an empty -o or -i is a usage error, before anything is written', () => {
  it.each([
    [['save', 'sim:size=4K', '-o', ''], '-o/--output'],
    [['load', 'sim:size=4K', '-i', ''], '-i/--input'],
  ])('%j', async (args, option) => {
    const r = await runInProcess(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      `vfio-mig: ${option} needs a file name, or - (got an empty string)\n(see vfio-mig ${args[0]} --help)\n`,
    );
  });

  it('save -o "" leaves no file in the working directory or its parent', () => {
    const cwd = join(dir, 'empty-o', 'cwd');
    mkdirSync(cwd, { recursive: true });
    const r = spawnSync(process.execPath, [CLI, 'save', 'sim:size=4K', '-o', ''], { cwd, encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(readdirSync(join(dir, 'empty-o'))).toEqual(['cwd']);
    expect(readdirSync(cwd)).toEqual([]);
  });

  it('--help says -o and -i are required', async () => {
    expect((await runInProcess(['save', '--help'])).stdout).toMatch(
      /-o, --output <file> +target file, or - for stdout \(required\)/,
    );
    expect((await runInProcess(['load', '--help'])).stdout).toMatch(
      /-i, --input <file> +state file[^]*?\(required\)\n +--protocol/,
    );
  });
});

describe('-i that is not a regular file is read once, as a stream, as -i - is', () => {
  const MODEL = 'sim:size=16K';
  const good = join(dir, 'stream-good.vfio');
  const loaded = /^loaded 16496 bytes \(saved with v2\) into sim:size=16K with the v2 protocol; device now RUNNING\n$/;
  const abandoned =
    /^vfio-mig: load on .*: EINVAL \(22\): the header says 16497 stream bytes, received 16496, the trailer says 16496; load abandoned: \S+ reset to RUNNING/;
  const saved = async () => {
    if (!existsSync(good)) expect((await runInProcess(['save', MODEL, '-o', good])).code).toBe(0);
    return readFileSync(good);
  };
  const badCount = async () => {
    const b = Buffer.from(await saved());
    b[16] = b[16]! ^ 1; // the header's byte count
    return b;
  };
  const sh = (script: string, env: Record<string, string>) =>
    spawnSync('bash', ['-c', script], {
      encoding: 'utf8',
      env: { ...process.env, NODE: process.execPath, CLI, ...env },
    });

  it('process substitution <(cat FILE)', async () => {
    writeFileSync(join(dir, 'bad-count.vfio'), await badCount());
    const ok = sh('"$NODE" "$CLI" load sim:size=16K -i <(cat "$F")', { F: good });
    expect(ok.stderr).toBe('');
    expect(ok.stdout).toMatch(loaded);
    expect(ok.status).toBe(0);
    const bad = sh('"$NODE" "$CLI" load sim:size=16K -i <(cat "$F")', { F: join(dir, 'bad-count.vfio') });
    expect(bad.stderr).toMatch(abandoned);
    expect(bad.status).toBe(5);
  });

  it('cat FILE | load -i /dev/stdin (a pipe), and /dev/stdin as a socket (what Node gives a child)', async () => {
    await saved();
    const piped = sh('cat "$F" | "$NODE" "$CLI" load sim:size=16K -i /dev/stdin', { F: good });
    expect(piped.stderr).toBe('');
    expect(piped.stdout).toMatch(loaded);
    const socket = runCli(['load', MODEL, '-i', '/dev/stdin'], await saved());
    expect(socket.stderr).toBe('');
    expect(socket.stdout).toMatch(loaded);
    expect(socket.code).toBe(0);
    const bad = runCli(['load', MODEL, '-i', '/dev/stdin'], await badCount());
    expect(bad.stderr).toMatch(abandoned);
    expect(bad.code).toBe(5);
  });

  it('a FIFO', async () => {
    const fifo = join(dir, 'in.fifo');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    for (const [bytes, code, out] of [
      [await saved(), 0, loaded],
      [await badCount(), 5, abandoned],
    ] as const) {
      const writer = spawn('sh', ['-c', 'cat > "$0"', fifo], { stdio: ['pipe', 'ignore', 'ignore'] });
      const written = new Promise((done) => writer.on('close', done));
      writer.stdin.end(bytes);
      const r = await runInProcess(['load', MODEL, '-i', fifo]);
      expect(r.code, r.stderr).toBe(code);
      expect(code === 0 ? r.stdout : r.stderr).toMatch(out);
      await written;
    }
  }, 20_000);

  it('a Unix socket that serves the file; one nothing listens on is ECONNREFUSED naming it', async () => {
    const path = join(dir, 'in.sock');
    const bytes = await saved();
    const server = createServer((c) => c.end(bytes));
    await new Promise<void>((done) => server.listen(path, done));
    try {
      const r = await runInProcess(['load', MODEL, '-i', path]);
      expect(r.stderr).toBe('');
      expect(r.stdout).toMatch(loaded);
    } finally {
      await new Promise((done) => server.close(done));
    }
    // A socket file left by a process that died: there, but nothing listens.
    const stale = join(dir, 'stale.sock');
    spawnSync(process.execPath, [
      '-e',
      `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`,
    ]);
    expect(statSync(stale).isSocket()).toBe(true);
    const refused = await runInProcess(['load', MODEL, '-i', stale]);
    expect(refused.stderr).toBe(`vfio-mig: load on ${stale}: ECONNREFUSED (111): connection refused\n`);
    expect(refused.code).toBe(1);
  });
});

describe("save -o of a socket, or of the run's own stdout, is written straight through", () => {
  it('-o /dev/stdout into a pipe is -o -: the summary goes to stderr, not into the data', () => {
    const r = spawnSync(
      'bash',
      ['-c', '"$NODE" "$CLI" save sim:size=16K -o /dev/stdout | "$NODE" "$CLI" load sim:size=16K -i -'],
      { encoding: 'utf8', env: { ...process.env, NODE: process.execPath, CLI } },
    );
    expect(r.stderr).toMatch(/^saved 16496 bytes .* to \/dev\/stdout with the v2 protocol; device left in STOP\n$/);
    expect(r.stdout).toMatch(/^loaded 16496 bytes /);
    expect(r.status).toBe(0);
  });

  it('-o /dev/stdout on a socket (what Node gives a child) into -i /dev/stdin', async () => {
    const [s, l] = await pipeCli(
      ['save', 'sim:size=16K', '-o', '/dev/stdout'],
      ['load', 'sim:size=16K', '-i', '/dev/stdin'],
    );
    expect(s.stderr).toMatch(/^saved 16496 bytes /);
    expect(s.code).toBe(0);
    expect(l.stderr).toBe('');
    expect(l.stdout).toMatch(/^loaded 16496 bytes /);
  });

  it('-o a listening Unix socket: connected to, and the whole state file arrives', async () => {
    const path = join(dir, 'out.sock');
    const got: Buffer[] = [];
    const server = createServer((c) => c.on('data', (d) => got.push(d)));
    await new Promise<void>((done) => server.listen(path, done));
    try {
      const r = await runInProcess(['save', 'sim:size=16K', '-o', path]);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      expect(statSync(path).isSocket()).toBe(true); // not replaced by a file
    } finally {
      await new Promise((done) => server.close(done));
    }
    const r = await runInProcess(['load', 'sim:size=16K', '-i', '-'], Buffer.concat(got));
    expect(r.stdout).toMatch(/^loaded 16496 bytes /);
  });
});

describe('a file and stdin are held to the same checks, and extra bytes are named', () => {
  const reason = (stderr: string, name: string) =>
    stderr.match(
      new RegExp(
        `^vfio-mig: load on ${name}: EINVAL \\(22\\): (.*?)(; load abandoned: \\S+ reset to RUNNING; the state it had before the load is gone)?\n$`,
      ),
    );
  // The expected reason from the stream's length n and the header's count h (all ones: saved to stdout).
  const damages: Array<[string, (b: Buffer) => Buffer, (n: number, h: bigint) => string]> = [
    [
      'header count byte 16',
      (b) => flip(b, 16),
      (n, h) => `the header says ${h} stream bytes, received ${n}, the trailer says ${n}`,
    ],
    [
      'header count byte 20',
      (b) => flip(b, 20),
      (n, h) => `the header says ${h} stream bytes, received ${n}, the trailer says ${n}`,
    ],
    [
      'trailer count',
      (b) => flip(b, b.length - 40),
      (n, h) =>
        h === STREAMED
          ? `the trailer says ${n ^ 1} stream bytes, received ${n}`
          : `the header says ${n} stream bytes, the trailer says ${n ^ 1}`,
    ],
    [
      '5 bytes appended',
      (b) => Buffer.concat([b, Buffer.from('junk\n')]),
      () =>
        '5 extra bytes after the trailer: refused, since a state file with bytes appended is not the file that was saved',
    ],
    [
      'a second copy appended',
      (b) => Buffer.concat([b, b]),
      (n) =>
        `${n + 80} extra bytes after the trailer: refused, since a state file with bytes appended is not the file that was saved`,
    ],
    [
      'cut in the trailer',
      (b) => b.subarray(0, b.length - 20),
      (n, h) =>
        h === STREAMED
          ? `truncated: the trailer is missing (${n + 28} bytes after the header)`
          : `truncated: the header says ${n} stream bytes (${n + 48} with the trailer), received ${n + 28}`,
    ],
    [
      'cut in the stream',
      (b) => b.subarray(0, b.length - 1000),
      (n, h) =>
        h === STREAMED
          ? `truncated: the trailer is missing (${n - 952} bytes after the header)`
          : `truncated: the header says ${n} stream bytes (${n + 48} with the trailer), received ${n - 952}`,
    ],
    ['a stream byte', (b) => flip(b, 100), () => 'checksum mismatch: the state data is corrupted'],
  ];
  function flip(b: Buffer, at: number): Buffer {
    const c = Buffer.from(b);
    c[at] = c[at]! ^ 1;
    return c;
  }
  // A file's header has the byte count; a file saved to stdout has all ones there, and only the trailer knows.
  for (const saved of ['-o FILE', '-o -'] as const) {
    it.each(damages)(
      `saved with ${saved}, %s: refused from the file (exit 1) and from stdin (exit 5), with one reason`,
      async (name, damage, why) => {
        const good = join(dir, `good-${saved === '-o -' ? 'stdout' : 'file'}.vfio`);
        const s = await runInProcess(['save', 'sim:size=16K', '-o', saved === '-o -' ? '-' : good]);
        expect(s.code, s.stderr).toBe(0);
        const intact = saved === '-o -' ? s.stdoutBytes : readFileSync(good);
        const bytes = damage(intact);
        const file = join(dir, `bad-${name.replace(/\W+/g, '-')}.vfio`);
        writeFileSync(file, bytes);
        const fromFile = await runInProcess(['load', 'sim:size=16K', '-i', file]);
        const fromStdin = await runInProcess(['load', 'sim:size=16K', '-i', '-'], bytes);
        expect(fromFile.code, fromFile.stderr).toBe(1);
        expect(fromStdin.code, fromStdin.stderr).toBe(5);
        const f = reason(fromFile.stderr, file.replace(/[.\\]/g, '\\$&'));
        const i = reason(fromStdin.stderr, 'stdin');
        expect(f?.[2], fromFile.stderr).toBeUndefined(); // a file is refused before the device is touched
        expect(i?.[2], fromStdin.stderr).toBeDefined();
        expect(i?.[1]).toBe(f?.[1]);
        expect(f?.[1]).toBe(why(intact.length - 80, bytes.readBigUInt64LE(16)));
      },
    );
  }
});

describe('file errors name the file the user gave, and permission errors exit 4', () => {
  it.runIf(!isRoot || hasRunuser)(
    'save -o into a read-only directory: the target, not the temporary file; exit 4',
    () => {
      mkdirSync(join(dir, 'ro-dir'), { mode: 0o555 });
      chmodSync(join(dir, 'ro-dir'), 0o555); // whatever the umask
      const r = runUnprivileged(['save', 'sim:size=4K', '-o', 'ro-dir/x.vfio']);
      expect(r.stderr).toBe(
        `vfio-mig: save on ro-dir/x.vfio: EACCES (13): permission denied while creating a file in ${join(dir, 'ro-dir')} (check the permissions of the file and its directory)\n`,
      );
      expect(r.code).toBe(4);
      expect(readdirSync(join(dir, 'ro-dir'))).toEqual([]);
    },
  );

  it.runIf(!isRoot || hasRunuser)('load -i of a mode-000 file: EACCES on the file, exit 4', async () => {
    const file = join(dir, 'mode000.vfio');
    expect((await runInProcess(['save', 'sim:size=4K', '-o', file])).code).toBe(0);
    chmodSync(file, 0);
    const r = runUnprivileged(['load', 'sim:size=4K', '-i', 'mode000.vfio']);
    expect(r.stderr).toBe(
      'vfio-mig: load on mode000.vfio: EACCES (13): permission denied (check the permissions of the file and its directory)\n',
    );
    expect(r.code).toBe(4);
  });

  it.runIf(!isRoot || hasRunuser)(
    'load -i behind a directory this user may not search: EACCES, not "no such file"',
    () => {
      mkdirSync(join(dir, 'closed'));
      writeFileSync(join(dir, 'closed', 'x.vfio'), 'x');
      chmodSync(join(dir, 'closed'), 0);
      const r = runUnprivileged(['load', 'sim:size=4K', '-i', 'closed/x.vfio']);
      chmodSync(join(dir, 'closed'), 0o700); // for the clean-up
      expect(r.stderr).toMatch(/^vfio-mig: load on closed\/x\.vfio: EACCES \(13\): permission denied/);
      expect(r.code).toBe(4);
    },
  );

  it('save -o /proc/x.vfio: ENOENT on the target, in the same form', async () => {
    const r = await runInProcess(['save', 'sim:size=4K', '-o', '/proc/x.vfio']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      'vfio-mig: save on /proc/x.vfio: ENOENT (2): no such file or directory while creating a file in /proc (check the file path)\n',
    );
  });
});

describe('save -o keeps the mode (and, as root, the owner) of the file it replaces', () => {
  const STATE_FILE = /^VFIOMIG\0/;
  it('an existing file keeps its mode, whatever the umask would give', async () => {
    for (const mode of [0o600, 0o640, 0o666]) {
      const file = join(dir, `mode-${mode.toString(8)}.vfio`);
      writeFileSync(file, 'old');
      chmodSync(file, mode);
      const r = await runInProcess(['save', 'sim:size=4K', '-o', file]);
      expect(r.code, r.stderr).toBe(0);
      expect(readFileSync(file).toString('latin1')).toMatch(STATE_FILE);
      expect(statSync(file).mode & 0o7777).toBe(mode);
    }
  });

  it('a new file is 0600: device state can carry guest memory', async () => {
    const file = join(dir, 'new.vfio');
    expect((await runInProcess(['save', 'sim:size=4K', '-o', file])).code).toBe(0);
    expect(statSync(file).mode & 0o7777).toBe(0o600);
  });

  it.runIf(isRoot)('as root, an existing file keeps its owner and group', async () => {
    const file = join(dir, 'owned.vfio');
    writeFileSync(file, 'old');
    chownSync(file, 65534, 65534);
    chmodSync(file, 0o640);
    expect((await runInProcess(['save', 'sim:size=4K', '-o', file])).code).toBe(0);
    const st = statSync(file);
    expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([65534, 65534, 0o640]);
  });
});

describe('the last progress line shows the finished total', () => {
  const hasScript = spawnSync('script', ['--version']).status === 0;
  /** The progress line as the terminal shows it when the command has ended: the last one drawn before the newline. */
  const finalLine = (out: string) =>
    out
      .split('\n')[0]!
      .split('\r')
      .filter((s) => s.trim())
      .at(-1)!
      .trimEnd();
  it.runIf(hasScript)("save: the saved total, not the estimate (~99%); load: 100% of the header's count", () => {
    const file = join(dir, 'progress.vfio');
    const save = spawnSync(
      'script',
      ['-qec', `${process.execPath} ${CLI} save sim:size=8M,read-delay-ms=1 -o ${file}`, '/dev/null'],
      { encoding: 'utf8' },
    );
    expect(save.status).toBe(0);
    // Pre-copy sends more than MIG_DATA_SIZE's 8 MiB estimate (8.6 MiB here).
    const saved = formatBytes(Number(/^saved (\d+) bytes /m.exec(save.stdout)![1])).replace('.', '\\.');
    expect(finalLine(save.stdout)).toMatch(
      new RegExp(`^save sim:size=8M,read-delay-ms=1 done: ${saved} in \\d+\\.\\d s at [\\d.]+ (B|KiB|MiB|GiB)/s$`),
    );
    const load = spawnSync(
      'script',
      [
        '-qec',
        `${process.execPath} ${CLI} load sim:size=8M,write-delay-ms=1,short-write=65536 -i ${file}`,
        '/dev/null',
      ],
      { encoding: 'utf8' },
    );
    expect(load.status).toBe(0);
    expect(finalLine(load.stdout)).toMatch(
      new RegExp(
        `^load sim:size=8M,write-delay-ms=1,short-write=65536 done: ${saved} \\(100%\\) in \\d+\\.\\d s at [\\d.]+ (B|KiB|MiB|GiB)/s$`,
      ),
    );
  });
});

describe('-i - with a regular file as stdin (load -i - < FILE)', () => {
  it('is checked whole before the device is touched, as -i FILE is: exit 1, no reset; a good one loads', () => {
    const good = join(dir, 'stdin-good.vfio');
    const flip = join(dir, 'stdin-flip.vfio');
    expect(spawnSync(process.execPath, [CLI, 'save', 'sim', '-o', good]).status).toBe(0);
    const bytes = readFileSync(good);
    bytes[100]! ^= 1;
    writeFileSync(flip, bytes);
    const withStdin = (file: string) => {
      const fd = openSync(file, 'r');
      try {
        return spawnSync(process.execPath, [CLI, 'load', 'sim', '-i', '-'], {
          stdio: [fd, 'pipe', 'pipe'],
          encoding: 'utf8',
        });
      } finally {
        closeSync(fd);
      }
    };
    const bad = withStdin(flip);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toBe('vfio-mig: load on stdin: EINVAL (22): checksum mismatch: the state data is corrupted\n');
    const ok = withStdin(good);
    expect(ok.status, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/^loaded 1176080 bytes/);
  });
});

describe("another user's file in a sticky directory", () => {
  // rename(2) refuses it (EPERM): found before the device is touched, not after its state was read.
  it.runIf(isRoot && hasRunuser)('save -o over it: EPERM naming the file, exit 4, the file untouched', () => {
    const sticky = join(dir, 'sticky');
    mkdirSync(sticky);
    chmodSync(sticky, 0o1777);
    const file = join(sticky, 'roots.vfio');
    writeFileSync(file, "root's");
    chmodSync(file, 0o644);
    const r = runUnprivileged(['save', 'sim:size=4K', '-o', file]);
    expect(r.code).toBe(4);
    expect(r.stderr).toBe(
      `vfio-mig: save on ${file}: EPERM (1): another user's file in a sticky directory (${sticky}) cannot be replaced (check the permissions of the file and its directory)\n`,
    );
    expect(readFileSync(file, 'utf8')).toBe("root's");
    expect(readdirSync(sticky)).toEqual(['roots.vfio']);
  });
});

describe('save -o >(cmd)', () => {
  it('writes through the /dev/fd link of a process substitution (its text is "pipe:[N]", not a path), and the copy loads', () => {
    const copy = join(dir, 'via-procsub.vfio');
    const r = spawnSync('bash', ['-c', `"${process.execPath}" "${CLI}" save sim -o >(cat > "${copy}"); wait $!`], {
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^saved 1176080 bytes .* to \/dev\/fd\/\d+ with the v2 protocol/);
    const load = spawnSync(process.execPath, [CLI, 'load', 'sim', '-i', copy], { encoding: 'utf8' });
    expect(load.status, load.stderr).toBe(0);
  });
});

describe('a load refused while its writer keeps stdin open', () => {
  it('ends at once: the refused stream is not read to its end', async () => {
    const cli = spawnCli(['load', 'sim', '-i', '-'], { stdin: 'pipe', deadlineMs: 10_000 });
    cli.p.stdin!.write(Buffer.alloc(64, 0x78)); // not a state file; the pipe stays open
    const exit = await cli.exited;
    cli.p.stdin!.destroy();
    expect(exit).toEqual({ code: 1, signal: null });
    expect(textOf(cli.stderr)).toBe('vfio-mig: load on stdin: EINVAL (22): wrong magic: not a vfio-mig state file\n');
  }, 20_000);
});
