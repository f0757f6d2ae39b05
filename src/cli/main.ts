#!/usr/bin/env node
/** vfio-mig, the process: a context on the process's streams and signals, then the command line. */
import { CliContext, stdinKindOf } from './context.js';
import { noteInheritedFds, replaceProcess } from './exec-inplace.js';
import { dropOutputOnClosedPipe } from './output.js';
import { runCli } from './program.js';

const given = noteInheritedFds(); // before Node's stdio streams exist: what `exec` hands on to COMMAND
for (const stream of [process.stdout, process.stderr]) dropOutputOnClosedPipe(stream);
const argv = process.argv.slice(2);
const ctx = new CliContext(
  {
    stdout: process.stdout,
    stderr: process.stderr,
    stdin: () => process.stdin,
    stdinKind: stdinKindOf(),
    signals: process,
    exit: (code) => process.exit(code),
    execve: (path, args, env) => replaceProcess(given, path, args, env),
  },
  argv,
);
process.exitCode = await runCli(argv, ctx);
// A load refused midway stops reading: a writer that keeps the pipe open must not keep this process alive.
if (ctx.stdinRead) process.stdin.destroy();
