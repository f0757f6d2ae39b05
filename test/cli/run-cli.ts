import { spawn, spawnSync } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { cpSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { CliContext, type CliIo } from '../../src/cli/context.js';
import { runCli as runCommandLine } from '../../src/cli/program.js';

export const CLI = join(__dirname, '../../dist/cli/main.js');

/**
 * A copy of the built CLI and its runtime dependencies under `dir`, for runs
 * as another user: the checkout may sit where that user cannot search
 * (a clone in /root, mode 0700). Returns the copy's main.js.
 */
export function cliCopyIn(dir: string): string {
  const root = join(__dirname, '../..');
  const to = join(dir, 'vfio-mig-cli');
  const main = join(to, 'dist/cli/main.js');
  if (existsSync(main)) return main;
  cpSync(join(root, 'dist'), join(to, 'dist'), { recursive: true });
  cpSync(join(root, 'package.json'), join(to, 'package.json'));
  // The runtime dependencies, with their own and the optional ones installed here (koffi's native
  // module is one). node_modules may be a link (a worktree's): the copy holds real files.
  const deps = (dir: string) => {
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as Record<
      string,
      Record<string, string> | undefined
    >;
    return [...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.optionalDependencies ?? {})];
  };
  const todo = deps(root);
  for (const seen = new Set<string>(); todo.length;) {
    const name = todo.pop()!;
    const from = join(root, 'node_modules', name);
    if (seen.has(name) || !existsSync(from)) continue; // an optional dependency for another platform
    seen.add(name);
    cpSync(from, join(to, 'node_modules', name), { recursive: true, dereference: true });
    todo.push(...deps(from));
  }
  return main;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI as a process (npm test builds first): for signals, terminals, pipes and the binary's own exit. */
export function runCli(args: string[], input?: Buffer | string, env: Record<string, string> = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    input,
    encoding: 'utf8',
    env: { ...process.env, NO_COLOR: '1', ...env },
    maxBuffer: 1 << 28,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A Writable that keeps what it is given. */
export function sink(): Writable & { bytes(): Buffer } {
  const chunks: Buffer[] = [];
  const w = new Writable({
    write(chunk: Buffer, _enc, done) {
      chunks.push(chunk);
      done();
    },
  });
  return Object.assign(w, { bytes: () => Buffer.concat(chunks) });
}

/** A context on buffers: stdin is `input`; signals come from `signals` when given (emit them to interrupt). */
export function bufferContext(args: string[], input?: Buffer | string, more: Partial<CliIo> = {}) {
  const stdout = sink();
  const stderr = sink();
  const io: CliIo = {
    stdout,
    stderr,
    stdin: () => Readable.from(input === undefined ? [] : [Buffer.from(input)]),
    ...more,
  };
  return { ctx: new CliContext(io, args), stdout, stderr };
}

export interface InProcessResult extends CliResult {
  stdoutBytes: Buffer;
}

/** Runs one command line in this process with buffers for stdin, stdout and stderr: what runCli gives, without a process. */
export async function runInProcess(args: string[], input?: Buffer | string): Promise<InProcessResult> {
  const { ctx, stdout, stderr } = bufferContext(args, input);
  const code = await runCommandLine(args, ctx);
  return {
    code,
    stdout: stdout.bytes().toString('utf8'),
    stderr: stderr.bytes().toString('utf8'),
    stdoutBytes: stdout.bytes(),
  };
}

/** A stand-in for the process's signals. */
export const signalSource = () => new EventEmitter();

/** Runs `vfio-mig A | vfio-mig B` as two processes joined by a pipe. */
export function pipeCli(a: string[], b: string[]): Promise<[CliResult, CliResult]> {
  return new Promise((resolve) => {
    const pa = spawn(process.execPath, [CLI, ...a], { stdio: ['ignore', 'pipe', 'pipe'] });
    const pb = spawn(process.execPath, [CLI, ...b], { stdio: ['pipe', 'pipe', 'pipe'] });
    pa.stdout.pipe(pb.stdin);
    const out = [
      { code: null, stdout: '', stderr: '' },
      { code: null, stdout: '', stderr: '' },
    ] as [CliResult, CliResult];
    pa.stderr.on('data', (d) => (out[0].stderr += d));
    pb.stdout.on('data', (d) => (out[1].stdout += d));
    pb.stderr.on('data', (d) => (out[1].stderr += d));
    let left = 2;
    const done = (i: 0 | 1) => (code: number | null) => {
      out[i].code = code;
      if (--left === 0) resolve(out);
    };
    pa.on('close', done(0));
    pb.on('close', done(1));
  });
}
