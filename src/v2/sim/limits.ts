/** The simulated device's largest state (1 TiB): a limit the CLI names before it builds a device. */
export const SIM_MAX_STATE_SIZE = 2 ** 40;
