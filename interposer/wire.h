/*
 * The interposer <-> bridge service wire format: one SOCK_STREAM Unix
 * connection per bridged device, requests answered in order. All integers
 * little-endian (the interposer only runs where the device is). Mirrored by
 * src/service/wire.ts; test/interposer/wire-layout.test.ts checks both agree.
 */
#ifndef VFIO_MIG_WIRE_H
#define VFIO_MIG_WIRE_H
#include <stdint.h>

#define VMW_HELLO 1   /* payload: struct vmw_hello + device path */
#define VMW_SECTION 2 /* payload: int32 memfd number in the client */
#define VMW_READ 3    /* offset, length: header bytes of the v1 region */
#define VMW_WRITE 4   /* offset, length + that many bytes */
#define VMW_BYE 5     /* payload: struct vmw_bye */
#define VMW_STATUS 6  /* no payload, alone on its connection; reply: JSON (vfio-mig libvirt check, never the interposer) */

struct vmw_request {
	uint32_t op;
	uint32_t payload_len;
	uint64_t offset;
	uint32_t length;
	uint32_t reserved;
};

struct vmw_reply {
	int32_t result; /* >= 0, or -errno */
	uint32_t payload_len;
};

struct vmw_hello {
	uint32_t pid;
	int32_t fd;
	uint32_t num_regions;
	uint32_t reserved;
};

/* HELLO reply payload: bridged 0 -> the rest is a message for stderr. */
struct vmw_hello_reply {
	uint32_t bridged;
	uint32_t reserved;
	uint64_t section_size;
};

/* SECTION reply payload, followed by info_len bytes of vfio_region_info + caps. */
struct vmw_region {
	uint32_t index;
	uint32_t info_len;
	uint64_t region_offset; /* where the region starts in the device fd's offset space */
	uint64_t region_size;
	uint64_t data_offset;   /* data section, relative to the region */
	uint64_t section_size;
};

/*
 * The v1 region's header at offset 0, whose bytes VMW_READ and VMW_WRITE
 * carry (docs/protocol.md#v1-layout): linux/vfio.h's struct
 * vfio_device_migration_info, which uapi headers since 6.2 no longer have.
 * The data section starts at or after its end.
 */
struct vmw_v1_header {
	uint32_t device_state;
	uint32_t reserved;
	uint64_t pending_bytes;
	uint64_t data_offset;
	uint64_t data_size;
};

struct vmw_bye {
	uint64_t data_reads;
	uint64_t data_writes;
	uint64_t data_mmaps;
};

#endif
