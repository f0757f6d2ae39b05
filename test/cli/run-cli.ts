import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';

export const CLI = join(__dirname, '../../dist/cli/main.js');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI (npm test builds first). */
export function runCli(args: string[], input?: Buffer | string, env: Record<string, string> = {}): CliResult {
  const r = spawnSync(process.execPath, [CLI, ...args], { input, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1', ...env }, maxBuffer: 1 << 28 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs `vfio-mig A | vfio-mig B` as two processes joined by a pipe. */
export function pipeCli(a: string[], b: string[]): Promise<[CliResult, CliResult]> {
  return new Promise((resolve) => {
    const pa = spawn(process.execPath, [CLI, ...a], { stdio: ['ignore', 'pipe', 'pipe'] });
    const pb = spawn(process.execPath, [CLI, ...b], { stdio: ['pipe', 'pipe', 'pipe'] });
    pa.stdout.pipe(pb.stdin);
    const out = [{ code: null, stdout: '', stderr: '' }, { code: null, stdout: '', stderr: '' }] as [CliResult, CliResult];
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
