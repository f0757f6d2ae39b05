/**
 * What one client may cost a shared service (src/service/limits.ts,
 * docs/interposer.md#trust-model), at the exact bounds: connection counts
 * per uid, per process and in all; device names made safe for one log
 * line; the per-connection and the shared log budgets.
 */
import { describe, expect, it } from 'vitest';
import { ConnectionCount, DEFAULT_LIMITS, escapeForLog, limitedLog, sharedLog } from '../../src/service/limits.js';

describe('ConnectionCount', () => {
  const limits = { maxConnections: 4, maxConnectionsPerUid: 3, maxConnectionsPerProcess: 2 };

  it('admits up to each bound exactly, and says which bound refused the next one', () => {
    const c = new ConnectionCount(limits);
    expect(c.admit(1, 'p1')).toBeNull();
    expect(c.admit(1, 'p1')).toBeNull();
    expect(c.admit(1, 'p1')).toBe('the process has 2 connections open (at most 2)');
    expect(c.admit(1, 'p2')).toBeNull();
    expect(c.admit(1, 'p3')).toBe('uid 1 has 3 connections open (at most 3)');
    expect(c.admit(2, 'p4')).toBeNull();
    expect(c.admit(3, 'p5')).toBe('4 connections are open (at most 4)');
  });

  it('a refused connection takes nothing: the counts stay where they were', () => {
    const c = new ConnectionCount(limits);
    c.admit(1, 'p1');
    c.admit(1, 'p1');
    for (let i = 0; i < 5; i++) expect(c.admit(1, 'p1')).not.toBeNull();
    expect(c.admit(1, 'p2')).toBeNull(); // uid 1 holds 3: the refusals were not counted
    expect(c.admit(2, 'p3')).toBeNull(); // 4 in all
  });

  it('release gives back one place per uid, per process and in all', () => {
    const c = new ConnectionCount(limits);
    c.admit(1, 'p1');
    c.admit(1, 'p1');
    c.admit(1, 'p2');
    c.admit(2, 'p3');
    c.release(1, 'p1');
    expect(c.admit(1, 'p2')).toBeNull(); // a place in all, for uid 1, and p2 had one
    expect(c.admit(2, 'p3')).toBe('4 connections are open (at most 4)');
    c.release(1, 'p2');
    c.release(1, 'p2');
    expect(c.admit(1, 'p2')).toBeNull();
    expect(c.admit(1, 'p2')).toBeNull();
    expect(c.admit(3, 'p4')).toBe('4 connections are open (at most 4)');
  });

  it('a release takes one place back, not all of that uid or process', () => {
    const c = new ConnectionCount({ maxConnections: 100, maxConnectionsPerUid: 3, maxConnectionsPerProcess: 100 });
    for (let i = 0; i < 3; i++) expect(c.admit(1, `p${i}`)).toBeNull();
    c.release(1, 'p0');
    expect(c.admit(1, 'p3')).toBeNull();
    expect(c.admit(1, 'p4')).toBe('uid 1 has 3 connections open (at most 3)');
    const d = new ConnectionCount({ maxConnections: 100, maxConnectionsPerUid: 100, maxConnectionsPerProcess: 3 });
    for (let i = 0; i < 3; i++) expect(d.admit(i, 'p')).toBeNull();
    d.release(0, 'p');
    expect(d.admit(3, 'p')).toBeNull();
    expect(d.admit(4, 'p')).toBe('the process has 3 connections open (at most 3)');
  });

  it('a uid or process released to zero starts from zero again', () => {
    const c = new ConnectionCount({ maxConnections: 10, maxConnectionsPerUid: 1, maxConnectionsPerProcess: 1 });
    for (let i = 0; i < 20; i++) {
      expect(c.admit(7, 'p')).toBeNull();
      c.release(7, 'p');
    }
    expect(c.admit(7, 'p')).toBeNull();
    expect(c.admit(7, 'p')).toBe('uid 7 has 1 connections open (at most 1)');
  });

  it('the defaults are the documented ones', () => {
    expect(DEFAULT_LIMITS).toEqual({
      maxConnections: 512,
      maxConnectionsPerUid: 128,
      maxConnectionsPerProcess: 32,
      maxQueuedRequests: 4,
      maxUnsentBytes: 64 << 10,
      helloTimeoutMs: 5_000,
      logLinesPerConnection: 8,
    });
  });
});

describe('escapeForLog', () => {
  it('passes printable ASCII through unchanged', () => {
    const printable = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i))
      .join('')
      .replace(/["\\]/g, '');
    expect(escapeForLog(printable)).toBe(printable);
  });

  it('escapes quotes, backslashes, control bytes (two hex digits), DEL and anything past ASCII', () => {
    expect(escapeForLog('a"b\\c')).toBe('a\\"b\\\\c');
    expect(escapeForLog('\n\u0001\u001f\u007f')).toBe('\\x0a\\x01\\x1f\\x7f');
    expect(escapeForLog('\u00e9\u00ff')).toBe('\\xe9\\xff');
    expect(escapeForLog('\u0100\u2028\u{1f600}')).toBe('\\u{100}\\u{2028}\\u{1f600}');
  });

  it('keeps at most 128 characters, marking the cut', () => {
    expect(escapeForLog('x'.repeat(128))).toBe('x'.repeat(128));
    expect(escapeForLog('x'.repeat(129))).toBe(`${'x'.repeat(128)}...`);
  });
});

describe('limitedLog', () => {
  it('writes `budget` lines, then one saying the rest are dropped, then nothing', () => {
    const out: string[] = [];
    const log = limitedLog(
      (l) => out.push(l),
      2,
      () => 'dev',
    );
    for (let i = 0; i < 6; i++) log(`line ${i}`);
    expect(out).toEqual(['line 0', 'line 1', 'dev: more than 2 log lines from this connection; the rest are dropped']);
  });

  it('with no log, nothing is written and nothing fails', () => {
    const log = limitedLog(undefined, 1, () => {
      throw new Error('who is never asked without a log');
    });
    for (let i = 0; i < 3; i++) log('line');
  });
});

describe('sharedLog', () => {
  it('a burst of `burst` lines, then one a second, with the count dropped before it', () => {
    let t = 1_000_000;
    const out: string[] = [];
    const log = sharedLog(
      (l) => out.push(l),
      3,
      () => t,
    );
    for (let i = 0; i < 5; i++) log(`a${i}`);
    expect(out).toEqual(['a0', 'a1', 'a2']);
    t += 500; // half a token
    log('b');
    expect(out).toHaveLength(3);
    t += 500;
    log('c');
    expect(out[3]).toBe('c (3 lines from clients not bridged were dropped before this one)');
    t += 1000;
    log('d');
    expect(out[4]).toBe('d'); // the count starts again after it was reported
  });

  it('refills at most to the burst, however long it was quiet', () => {
    let t = 0;
    const out: string[] = [];
    const log = sharedLog(
      (l) => out.push(l),
      2,
      () => t,
    );
    t += 3_600_000;
    for (let i = 0; i < 5; i++) log(`x${i}`);
    expect(out).toEqual(['x0', 'x1']);
  });

  it('defaults to a burst of 10', () => {
    const out: string[] = [];
    const log = sharedLog((l) => out.push(l));
    for (let i = 0; i < 12; i++) log(`l${i}`);
    expect(out).toHaveLength(10);
  });

  it('with no log, lines are only counted', () => {
    let t = 0;
    const log = sharedLog(undefined, 1, () => t);
    log('a');
    t += 5000;
    log('b');
  });
});
