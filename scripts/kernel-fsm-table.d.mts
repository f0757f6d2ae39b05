// Types of kernel-fsm-table.mjs for the FSM test that imports it.
/** What the kernel's vfio_mig_get_next_state() returns for every (flags, cur, new), one line each; needs a C compiler. */
export function kernelFsmTable(srcDir: string): string;
