/*
 * A stand-in for QEMU 7.2's v1 migration caller (hw/vfio/migration.c at
 * v7.2.0), for tests and benchmarks of the interposer (docs/interposer.md)
 * without a VM: finds the v1 region the way vfio_migration_init() does (GET_INFO,
 * GET_REGION_INFO with argsz 32 then the size asked, CAP_TYPE {3, 1}, the
 * sparse-mmap area), then saves or loads through it with QEMU's register
 * sequence and its vfio_mig_rw() access split (naturally aligned 8/4/2/1
 * bytes), or through the mmap'd data section.
 *
 *   qemu72-client DEVICE save FILE [mmap|pread] [precopy|forkclose|start]...
 *   qemu72-client DEVICE load FILE [mmap|pread]
 *
 * start: first what QEMU 7.2's vfio_vmstate_change() writes when the VM
 * starts running (mask ~7, value 001), on whatever device_state it finds.
 *
 * Prints one line: "ok BYTES bytes SECONDS s HEADER header accesses DATA data accesses".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RUNNING 1
#define SAVING 2
#define RESUMING 4
#define MASK 7

static int dev;
static uint64_t reg_off, reg_size;
static uint8_t *map; /* the data section's mapping, or NULL */
static uint64_t map_off, map_size;
static long header_accesses, data_accesses;

static void die(const char *what)
{
	fprintf(stderr, "qemu72-client: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* vfio_mig_access: one pread/pwrite; short is failure. */
static void access1(int write, void *buf, size_t len, uint64_t off)
{
	ssize_t n = write ? pwrite(dev, buf, len, reg_off + off) : pread(dev, buf, len, reg_off + off);
	if (n != (ssize_t)len) {
		if (n >= 0)
			errno = EINVAL;
		fprintf(stderr, "qemu72-client: vfio_mig_%s %zu bytes at 0x%llx failed: %s\n", write ? "write" : "read", len,
			(unsigned long long)off, strerror(errno));
		exit(2);
	}
	if (off < 32)
		header_accesses++;
	else
		data_accesses++;
}

/* vfio_mig_rw: split into naturally aligned 8/4/2/1-byte accesses. */
static void mig_rw(int write, uint8_t *buf, size_t len, uint64_t off)
{
	while (len) {
		size_t n = len >= 8 && !(off % 8) ? 8 : len >= 4 && !(off % 4) ? 4 : len >= 2 && !(off % 2) ? 2 : 1;
		access1(write, buf, n, off);
		buf += n;
		off += n;
		len -= n;
	}
}

static uint64_t rd64(uint64_t off)
{
	uint64_t v;
	mig_rw(0, (uint8_t *)&v, 8, off);
	return v;
}

static void wr64(uint64_t off, uint64_t v) { mig_rw(1, (uint8_t *)&v, 8, off); }

/* vfio_migration_set_state: read-modify-write of device_state. */
static void set_state(uint32_t mask, uint32_t value)
{
	uint32_t s;
	mig_rw(0, (uint8_t *)&s, 4, 0);
	s = (s & mask) | value;
	mig_rw(1, (uint8_t *)&s, 4, 0);
}

/* The data section [off, off + len): memcpy when mapped, else 8-byte accesses. */
static void data_rw(int write, uint8_t *buf, size_t len, uint64_t off)
{
	if (map && off >= map_off && off + len <= map_off + map_size) {
		if (write)
			memcpy(map + (off - map_off), buf, len);
		else
			memcpy(buf, map + (off - map_off), len);
		return;
	}
	mig_rw(write, buf, len, off);
}

static void find_region(int want_mmap)
{
	struct vfio_device_info info = { .argsz = sizeof(info) };
	if (ioctl(dev, VFIO_DEVICE_GET_INFO, &info) < 0)
		die("VFIO_DEVICE_GET_INFO");
	for (uint32_t i = 0; i < info.num_regions; i++) {
		struct vfio_region_info small = { .argsz = sizeof(small), .index = i };
		if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &small) < 0 || !(small.flags & VFIO_REGION_INFO_FLAG_CAPS))
			continue;
		struct vfio_region_info *ri = calloc(1, small.argsz);
		ri->argsz = small.argsz;
		ri->index = i;
		if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, ri) < 0)
			die("VFIO_DEVICE_GET_REGION_INFO");
		int is_mig = 0;
		struct vfio_region_sparse_mmap_area area = { 0 };
		for (uint32_t at = ri->cap_offset; at;) {
			struct vfio_info_cap_header *h = (void *)((uint8_t *)ri + at);
			if (h->id == VFIO_REGION_INFO_CAP_TYPE) {
				struct vfio_region_info_cap_type *t = (void *)h;
				is_mig = t->type == 3 && t->subtype == 1;
			} else if (h->id == VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
				struct vfio_region_info_cap_sparse_mmap *sm = (void *)h;
				if (sm->nr_areas)
					area = sm->areas[0];
			}
			at = h->next;
		}
		if (is_mig) {
			reg_off = ri->offset;
			reg_size = ri->size;
			if (want_mmap && (ri->flags & VFIO_REGION_INFO_FLAG_MMAP) && area.size) {
				map = mmap(NULL, area.size, PROT_READ | PROT_WRITE, MAP_SHARED, dev, reg_off + area.offset);
				if (map == MAP_FAILED)
					die("mmap of the data section");
				map_off = area.offset;
				map_size = area.size;
			}
			free(ri);
			return;
		}
		free(ri);
	}
	fprintf(stderr, "qemu72-client: VFIO device doesn't support migration\n");
	exit(3);
}

/* vfio_save_buffer: one chunk to `out`; returns data_size. */
static uint64_t save_buffer(FILE *out, uint8_t *buf)
{
	uint64_t off = rd64(16), size = rd64(24);
	if (size > reg_size - off) {
		fprintf(stderr, "qemu72-client: data_size %llu runs past the region\n", (unsigned long long)size);
		exit(2);
	}
	data_rw(0, buf, size, off);
	if (fwrite(buf, 1, size, out) != size)
		die("write to the output file");
	return size;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: qemu72-client DEVICE save|load FILE [mmap|pread] [precopy]\n");
		return 64;
	}
	int save = strcmp(argv[2], "save") == 0;
	int want_mmap = argc > 4 && strcmp(argv[4], "mmap") == 0;
	int precopy = 0, forkclose = 0, start = 0;
	for (int i = 5; i < argc; i++) {
		precopy |= strcmp(argv[i], "precopy") == 0;
		forkclose |= strcmp(argv[i], "forkclose") == 0;
		start |= strcmp(argv[i], "start") == 0;
	}
	dev = open(argv[1], O_RDWR);
	if (dev < 0)
		die(argv[1]);
	find_region(want_mmap);
	if (forkclose) {
		/* As QEMU's exec: migration: a child closes the inherited fds and exits. */
		pid_t child = fork();
		if (child == 0) {
			close(dev);
			exit(0);
		}
		waitpid(child, NULL, 0);
	}
	if (start)
		set_state(~MASK, RUNNING); /* the VM starts: -> 001 */
	uint8_t *buf = malloc(reg_size);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	uint64_t total = 0;
	if (save) {
		FILE *out = fopen(argv[3], "w");
		if (!out)
			die(argv[3]);
		if (precopy) {
			set_state(MASK, SAVING); /* 001 -> 011 */
			for (int rounds = 0; rounds < 1000; rounds++) {
				if (!rd64(8) && !rd64(8))
					break;
				total += save_buffer(out, buf);
			}
		}
		set_state(~RUNNING, SAVING); /* -> 010 */
		for (uint64_t pending = rd64(8); pending; pending = rd64(8)) {
			uint64_t n = save_buffer(out, buf);
			total += n;
			if (!n)
				break;
		}
		set_state(~SAVING, 0); /* -> 000 */
		if (fclose(out))
			die(argv[3]);
	} else {
		FILE *in = fopen(argv[3], "r");
		if (!in)
			die(argv[3]);
		set_state(~MASK, RESUMING); /* -> 100 */
		for (;;) {
			uint64_t off = rd64(16);
			size_t n = fread(buf, 1, reg_size - off, in);
			if (!n)
				break;
			data_rw(1, buf, n, off);
			wr64(24, n);
			total += n;
		}
		fclose(in);
		set_state(~MASK, RUNNING); /* 100 -> 001 */
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("ok %llu bytes %.6f s %ld header accesses %ld data accesses\n", (unsigned long long)total, secs, header_accesses,
	       data_accesses);
	return 0;
}
