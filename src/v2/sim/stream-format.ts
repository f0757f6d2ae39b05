/**
 * The simulated device's migration stream: a header naming the model and
 * the source's seed, then page records, then an END record. It is the sim's
 * own format (v2 leaves the format to the driver); what matters is that a
 * receiver can tell truncated, corrupt and foreign data apart.
 */
import { defineStruct } from '../../struct.js';

export const SIM_STREAM_MAGIC = 0x3176_4d49_5353_4656n; // 'VFSSIMv1' little-endian

export const simHeader = defineStruct('sim_stream_header', 32, {
  magic: { offset: 0, type: 'u64' },
  model: { offset: 8, type: 'u32' },
  page_size: { offset: 12, type: 'u32' },
  state_size: { offset: 16, type: 'u64' },
  seed: { offset: 24, type: 'u32' },
  reserved: { offset: 28, type: 'u32' },
});

export const RECORD_PAGE = 1;
export const RECORD_END = 2;

export const simRecord = defineStruct('sim_stream_record', 16, {
  kind: { offset: 0, type: 'u32' },
  page: { offset: 4, type: 'u32' },
  version: { offset: 8, type: 'u32' },
  length: { offset: 12, type: 'u32' },
});
