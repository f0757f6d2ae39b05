/** Whether a path names a terminal: binary device state is never written to or read from one. */
import { closeSync, constants, openSync } from 'node:fs';
import { isatty } from 'node:tty';

/** Whether a character device is a terminal (opened without becoming our controlling tty). */
export function isTerminal(path: string): boolean {
  let fd = -1;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOCTTY | constants.O_NONBLOCK);
    return isatty(fd);
  } catch {
    return false;
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}
