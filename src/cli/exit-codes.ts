/** vfio-mig exit codes (documented in --help and the README). */
export const EXIT = {
  OK: 0,
  FAILED: 1,
  USAGE: 2,
  NO_MIGRATION: 3,
  PERMISSION: 4,
  DEVICE_LEFT_BAD: 5,
} as const;

export const EXIT_HELP = `Exit codes:
  0    success
  1    the operation failed (the errno is in the message, and in --json output)
  2    usage error, or DEVICE is not a VFIO device node (a file, /dev/null)
  3    the device has no migration support (ENOTTY)
  4    permission denied (EACCES, EPERM)
  5    the device was left in a bad state (ERROR, or reset after a failed load)
  128+N  interrupted by signal N (130 SIGINT, 143 SIGTERM, 129 SIGHUP); the device's state is named`;
