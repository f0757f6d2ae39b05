/**
 * The built CLI as a child process, for tests of signals, pipes and the
 * service: every piped stream is collected from the start, `waitFor` waits
 * for what the process says instead of sleeping for "long enough", and a
 * process that ignores a signal is killed after a deadline (its exit then
 * shows as SIGKILL, failing the test, rather than hanging it).
 */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { CLI } from './run-cli.js';

const PROBE = join(__dirname, 'cli-probe.mjs');
const texts = new WeakMap<Readable, { text: string }>();

/** Keeps everything `stream` gives, for `waitFor` and `textOf`; the same record on a second call. */
export function collect(stream: Readable): { text: string } {
  let t = texts.get(stream);
  if (!t) {
    const rec = { text: '' };
    stream.setEncoding('utf8');
    stream.on('data', (d: string) => (rec.text += d));
    texts.set(stream, rec);
    t = rec;
  }
  return t;
}

/** All `stream` has given so far. */
export function textOf(stream: Readable): string {
  return collect(stream).text;
}

/**
 * Resolves with the text so far once it matches `re`; rejects, naming what
 * came, when `timeoutMs` passes or the stream ends first. The deadline is
 * generous: it only bounds a failing test.
 */
export function waitFor(stream: Readable, re: RegExp, timeoutMs = 20_000): Promise<string> {
  const rec = collect(stream);
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!re.test(rec.text)) return false;
      finish();
      resolve(rec.text);
      return true;
    };
    const fail = (why: string) => () => {
      if (check()) return;
      finish();
      reject(new Error(`waitFor ${re}: ${why}; got ${JSON.stringify(rec.text.slice(-2000))}`));
    };
    const ended = fail('the stream ended');
    const timer = setTimeout(fail(`nothing matched in ${timeoutMs} ms`), timeoutMs);
    const onData = () => void check();
    const finish = () => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('close', ended);
    };
    if (check()) return;
    stream.on('data', onData);
    stream.on('close', ended);
  });
}

export interface SpawnCliOptions {
  /** stdin: 'ignore' (default) or 'pipe'. */
  stdin?: 'ignore' | 'pipe';
  /** stdout: 'pipe' (default), 'ignore', or an fd (e.g. one open on /dev/null). */
  stdout?: 'pipe' | 'ignore' | number;
  env?: Record<string, string>;
  /** Run the CLI through this command line first (e.g. ['sh', '-c', script, 'sh']): it gets node, CLI, args. */
  via?: string[];
  /** More fds for the child, from fd 3 on (not with probe). */
  extraFds?: number[];
  /** Load test/cli/cli-probe.mjs: `probe` then reports opens and simulated-device calls. */
  probe?: boolean;
  /** SIGKILL the process this long after the start: a run that would hang ends as SIGKILL instead. */
  deadlineMs?: number;
}

export interface SpawnedCli {
  p: ChildProcess;
  stdout: Readable | null;
  stderr: Readable;
  /** The probe's lines (options.probe). */
  probe: Readable | null;
  /** Settles when the process has exited and its streams closed. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Sends `sig`; SIGKILL follows after `deadlineMs` unless the process has gone. */
  kill(sig: NodeJS.Signals, deadlineMs?: number): void;
}

export function spawnCli(args: readonly string[], options: SpawnCliOptions = {}): SpawnedCli {
  const node = options.probe ? [process.execPath, '--import', PROBE] : [process.execPath];
  const argv = [...(options.via ?? []), ...node, CLI, ...args];
  const stdio: StdioOptions = [
    options.stdin ?? 'ignore',
    options.stdout ?? 'pipe',
    'pipe',
    ...(options.probe ? ['pipe' as const] : (options.extraFds ?? [])),
  ];
  const p = spawn(argv[0]!, argv.slice(1), { stdio, env: { ...process.env, NO_COLOR: '1', ...options.env } });
  const stdout = p.stdout;
  const probe = options.probe ? (p.stdio[3] as Readable) : null;
  for (const s of [stdout, p.stderr, probe]) if (s) collect(s);
  let killer = options.deadlineMs === undefined ? undefined : setTimeout(() => p.kill('SIGKILL'), options.deadlineMs);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    p.on('close', (code, signal) => {
      clearTimeout(killer);
      r({ code, signal });
    }),
  );
  return {
    p,
    stdout,
    stderr: p.stderr!,
    probe,
    exited,
    kill(sig, deadlineMs = 20_000) {
      p.kill(sig);
      clearTimeout(killer);
      killer = setTimeout(() => p.kill('SIGKILL'), deadlineMs);
    },
  };
}
