/*
 * LD_PRELOAD interposer: gives a VFIO device fd the v1 migration region a
 * v1-era VMM (QEMU 5.2-7.2) looks for, and hands that region's accesses to
 * the bridge service (src/service), which translates them to v2. No
 * protocol logic lives here: the service decides whether a device is
 * bridged, builds the region info, and answers every header access. The
 * data section is memory shared with the service (a memfd this library
 * creates and the service takes with pidfd_getfd), so data-section reads,
 * writes and mmaps never cross the socket. docs/interposer.md has the
 * design; interposer/wire.h the wire format.
 *
 * Environment:
 *   VFIO_MIG_SOCKET      the service's socket; unset: nothing is bridged
 *   VFIO_MIG_REQUIRED=1  a device that cannot be bridged ends the process
 *   VFIO_MIG_TIMEOUT_MS  longest wait for one answer (default 20000)
 *   VFIO_MIG_PTRACER     pid of the service `vfio-mig exec` started beside
 *                        this process: allowed to ptrace it (Yama)
 *   VFIO_MIG_TEST_DEVICE a path whose fds count as VFIO devices (tests and
 *                        benchmarks against a simulated device; GET_INFO on
 *                        them is answered here: PCI, 9 regions)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/vfio.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "wire.h"

#define MAX_FD 4096
#define NAME_MAX_LEN 128

struct dev {
	int fd;
	pid_t owner; /* the process that attached: a forked child never speaks for it */
	char name[NAME_MAX_LEN];
	int sock; /* -1 once the service is gone */
	int memfd;
	uint8_t *section;
	size_t section_len; /* bytes mapped at section: what detach() unmaps */
	uint32_t index;
	uint64_t region_offset, region_size, data_offset, section_size;
	uint8_t *info;
	uint32_t info_len;
	uint64_t data_reads, data_writes, data_mmaps;
	pthread_mutex_t lock; /* one request on the socket at a time */
};

/* Per fd: NULL (not looked at), UNBRIDGED, or the device. */
#define UNBRIDGED ((struct dev *)1)
static struct dev *g_dev[MAX_FD];
static char g_name[MAX_FD][NAME_MAX_LEN]; /* device name from VFIO_GROUP_GET_DEVICE_FD */
static pthread_mutex_t g_attach = PTHREAD_MUTEX_INITIALIZER;

static int (*real_ioctl)(int, unsigned long, void *);
static ssize_t (*real_pread64)(int, void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_preadv64v2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_pwritev64v2)(int, const struct iovec *, int, off_t, int);
static void *(*real_mmap64)(void *, size_t, int, int, int, off_t);
static int (*real_close)(int);

static void resolve(void)
{
	if (real_close)
		return;
	real_ioctl = dlsym(RTLD_NEXT, "ioctl");
	real_pread64 = dlsym(RTLD_NEXT, "pread64");
	real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
	real_preadv64v2 = dlsym(RTLD_NEXT, "preadv64v2");
	real_pwritev64v2 = dlsym(RTLD_NEXT, "pwritev64v2");
	real_mmap64 = dlsym(RTLD_NEXT, "mmap64");
	real_close = dlsym(RTLD_NEXT, "close");
}

static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t w = write(2, buf, n);
	(void)w;
}

static int env_flag(const char *name)
{
	const char *v = getenv(name);
	return v && *v && strcmp(v, "0") != 0;
}

static int g_exiting; /* at exit, goodbyes wait at most a second */

#define DEFAULT_TIMEOUT_MS 20000

static int timeout_ms(void)
{
	static int parsed = -1;
	if (g_exiting)
		return 1000;
	if (parsed < 0) {
		const char *v = getenv("VFIO_MIG_TIMEOUT_MS");
		char *end = NULL;
		long t = v ? strtol(v, &end, 10) : 0;
		parsed = DEFAULT_TIMEOUT_MS;
		if (v && *v && (*end || t <= 0 || t > 3600000))
			say("vfio-mig: VFIO_MIG_TIMEOUT_MS=%s is not a whole number of milliseconds from 1 to 3600000; using %d", v, DEFAULT_TIMEOUT_MS);
		else if (v && *v)
			parsed = (int)t;
	}
	return parsed;
}

static struct dev *lookup(int fd)
{
	if (fd < 0 || fd >= MAX_FD)
		return NULL;
	struct dev *d = __atomic_load_n(&g_dev[fd], __ATOMIC_ACQUIRE);
	return d == UNBRIDGED ? NULL : d;
}

/* ------------------------------------------------------------ socket I/O */

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static int send_all(int sock, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = send(sock, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -ECONNRESET;
		p += n;
		len -= n;
	}
	return 0;
}

static int recv_all(int sock, void *buf, size_t len, long long deadline)
{
	uint8_t *p = buf;
	while (len) {
		long long left = deadline - now_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd pfd = { .fd = sock, .events = POLLIN };
		int r = poll(&pfd, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0)
			return -ETIMEDOUT;
		ssize_t n = recv(sock, p, len, 0);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return -ECONNRESET;
		p += n;
		len -= n;
	}
	return 0;
}

/*
 * One request and its answer. Returns the reply's result (>= 0 or -errno)
 * and copies at most `cap` payload bytes to `out` (*got: how many came).
 * A lost or silent service gives -ECONNRESET or -ETIMEDOUT and the socket is
 * closed (*sockp = -1): every later request fails with EIO at once.
 */
static int call(int *sockp, uint32_t op, uint64_t offset, uint32_t length,
		const void *payload, uint32_t payload_len, void *out, uint32_t cap, uint32_t *got)
{
	int sock = *sockp;
	if (sock < 0)
		return -EIO;
	struct vmw_request rq = { .op = op, .payload_len = payload_len, .offset = offset, .length = length };
	long long deadline = now_ms() + timeout_ms();
	struct vmw_reply rp;
	int r = send_all(sock, &rq, sizeof(rq));
	if (!r && payload_len)
		r = send_all(sock, payload, payload_len);
	if (!r)
		r = recv_all(sock, &rp, sizeof(rp), deadline);
	uint32_t keep = 0;
	if (!r) {
		keep = rp.payload_len < cap ? rp.payload_len : cap;
		r = recv_all(sock, out, keep, deadline);
		for (uint32_t skip = rp.payload_len - keep; !r && skip;) {
			uint8_t sink[256];
			uint32_t n = skip < sizeof(sink) ? skip : sizeof(sink);
			r = recv_all(sock, sink, n, deadline);
			skip -= n;
		}
	}
	if (r) {
		real_close(sock);
		*sockp = -1;
		return r;
	}
	if (got)
		*got = keep;
	return rp.result;
}

static int connect_service(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		real_close(s);
		return -e;
	}
	return s;
}

/* ------------------------------------------------------------ attach */

static int is_vfio_device(int fd)
{
	char link[64], target[PATH_MAX];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	if (n <= 0)
		return 0;
	target[n] = 0;
	const char *test = getenv("VFIO_MIG_TEST_DEVICE");
	if (test && *test && strcmp(target, test) == 0)
		return 2;
	return strcmp(target, "anon_inode:[vfio-device]") == 0 || strncmp(target, "/dev/vfio/devices/", 18) == 0;
}

static void unbridged(const char *name, const char *why)
{
	if (env_flag("VFIO_MIG_REQUIRED")) {
		say("vfio-mig: %s cannot be bridged: %s (VFIO_MIG_REQUIRED is set: exiting)", name, why);
		_exit(1);
	}
	say("vfio-mig: %s is not bridged: %s", name, why);
}

/* Largest data section mapped here: what `vfio-mig serve --section-size` allows. */
#define MAX_SECTION_SIZE (1ULL << 30)

/*
 * The service's answers are checked as it checks ours: a size or offset
 * that disagrees with what was mapped would send a pread, an mmap or
 * detach() past the section (docs/interposer.md#checks). Each returns 0,
 * or -1 with `why` naming the wrong value.
 */
static int check_hello(const struct vmw_hello_reply *hr, char *why, size_t n)
{
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);

	if (hr->section_size && hr->section_size % page == 0 && hr->section_size <= MAX_SECTION_SIZE)
		return 0;
	snprintf(why, n, "bad HELLO reply from the bridge service: section_size %" PRIu64 " (must be a non-zero multiple of %" PRIu64 ", at most %llu)",
		 hr->section_size, page, MAX_SECTION_SIZE);
	return -1;
}

#define BAD_SECTION(...) (snprintf(why, n, "bad SECTION reply from the bridge service: " __VA_ARGS__), -1)

/* `info` is the reply payload after the vmw_region, `got` bytes of it came. */
static int check_region(const struct vmw_region *reg, const uint8_t *info, uint32_t got, uint32_t num_regions,
			size_t mapped, char *why, size_t n)
{
	uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), end;
	struct vfio_region_info ri;
	struct vfio_info_cap_header h;

	if (reg->section_size != mapped)
		return BAD_SECTION("section_size %" PRIu64 " is not the %zu bytes mapped (HELLO's section_size)", reg->section_size, mapped);
	if (reg->data_offset < sizeof(struct vmw_v1_header) || reg->data_offset % page)
		return BAD_SECTION("data_offset %" PRIu64 " (must be a multiple of %" PRIu64 ", after the %zu-byte header)",
				   reg->data_offset, page, sizeof(struct vmw_v1_header));
	if (__builtin_add_overflow(reg->data_offset, reg->section_size, &end) || reg->region_size != end)
		return BAD_SECTION("region_size %" PRIu64 " is not data_offset + section_size (%" PRIu64 " + %" PRIu64 ")",
				   reg->region_size, reg->data_offset, reg->section_size);
	if (__builtin_add_overflow(reg->region_offset, reg->region_size, &end))
		return BAD_SECTION("region_offset 0x%" PRIx64 " + region_size %" PRIu64 " overflows", reg->region_offset, reg->region_size);
	if (reg->index != num_regions)
		return BAD_SECTION("index %u is not the device's region count (%u)", reg->index, num_regions);
	if (reg->info_len < sizeof(ri) || reg->info_len > got)
		return BAD_SECTION("info_len %u (must be at least %zu and at most the %u bytes received)", reg->info_len, sizeof(ri), got);
	memcpy(&ri, info, sizeof(ri));
	if (ri.index != reg->index)
		return BAD_SECTION("region info index %u is not index %u", ri.index, reg->index);
	if (ri.size != reg->region_size)
		return BAD_SECTION("region info size %llu is not region_size %" PRIu64, (unsigned long long)ri.size, reg->region_size);
	if (ri.offset != reg->region_offset)
		return BAD_SECTION("region info offset 0x%llx is not region_offset 0x%" PRIx64, (unsigned long long)ri.offset, reg->region_offset);
	/* The VMM walks the capability chain unchecked (QEMU's vfio_get_region_info_cap): each must lie inside, in order. */
	for (uint32_t off = (ri.flags & VFIO_REGION_INFO_FLAG_CAPS) ? ri.cap_offset : 0, prev = 0; off; prev = off, off = h.next) {
		uint64_t need = sizeof(h);

		if (off <= prev || off < sizeof(ri) || off > reg->info_len - sizeof(h))
			return BAD_SECTION("capability at %u is outside the region info (%u bytes)", off, reg->info_len);
		memcpy(&h, info + off, sizeof(h));
		if (h.id == VFIO_REGION_INFO_CAP_TYPE) {
			need = sizeof(struct vfio_region_info_cap_type);
		} else if (h.id == VFIO_REGION_INFO_CAP_SPARSE_MMAP) {
			struct vfio_region_info_cap_sparse_mmap sp = { 0 };

			memcpy(&sp, info + off, reg->info_len - off < sizeof(sp) ? reg->info_len - off : sizeof(sp));
			need = sizeof(sp) + (uint64_t)sp.nr_areas * sizeof(sp.areas[0]);
		}
		if (need > reg->info_len - off)
			return BAD_SECTION("capability %u at %u runs past the region info (%u bytes)", h.id, off, reg->info_len);
	}
	return 0;
}

/* Asks the service to bridge `fd`; with the global attach lock held. */
static struct dev *attach(int fd, uint32_t num_regions)
{
	const char *name = g_name[fd][0] ? g_name[fd] : "VFIO device";
	static int warned_unset;
	const char *path = getenv("VFIO_MIG_SOCKET");
	char why[512];
	int sock, memfd, r;
	void *section;
	size_t section_len;
	uint8_t info[1024];
	struct vmw_region reg;
	int32_t mfd;
	struct dev *d;

	if (!path || !*path) {
		if (!warned_unset++)
			unbridged(name, "VFIO_MIG_SOCKET is not set (start the VMM with `vfio-mig exec --`, or `vfio-mig serve`)");
		return NULL;
	}
	sock = connect_service(path);
	if (sock < 0) {
		snprintf(why, sizeof(why), "%s at %s (%s)", sock == -ENOENT || sock == -ECONNREFUSED ? "no bridge service" : "cannot reach the bridge service", path, strerror(-sock));
		unbridged(name, why);
		return NULL;
	}
	struct {
		struct vmw_hello h;
		char name[NAME_MAX_LEN];
	} hello = { .h = { .pid = getpid(), .fd = fd, .num_regions = num_regions } };
	memcpy(hello.name, g_name[fd], NAME_MAX_LEN);
	uint8_t reply[512];
	uint32_t got = 0;
	r = call(&sock, VMW_HELLO, 0, 0, &hello, sizeof(hello.h) + strnlen(hello.name, NAME_MAX_LEN), reply, sizeof(reply) - 1, &got);
	if (r < 0 && sock >= 0 && got > 0) {
		/* The service said why (a refusal, a full service): show its text, printable bytes only. */
		reply[got] = 0;
		for (uint32_t i = 0; i < got; i++)
			if (reply[i] < 0x20 || reply[i] > 0x7e)
				reply[i] = '?';
		snprintf(why, sizeof(why), "the bridge service refused it: %s", (char *)reply);
		goto err_close_sock;
	}
	if (r < 0 || got < sizeof(struct vmw_hello_reply)) {
		snprintf(why, sizeof(why), "%s", r == -ETIMEDOUT ? "the bridge service did not answer in time (VFIO_MIG_TIMEOUT_MS)"
						 : sock < 0 ? "the connection to the bridge service was lost"
							    : "the bridge service refused it (its log says why)");
		goto err_close_sock;
	}
	struct vmw_hello_reply hr;
	memcpy(&hr, reply, sizeof(hr));
	if (!hr.bridged) {
		reply[got] = 0;
		snprintf(why, sizeof(why), "%s", (char *)reply + sizeof(hr));
		goto err_close_sock;
	}
	if (check_hello(&hr, why, sizeof(why)))
		goto err_close_sock;
	section_len = hr.section_size;

	/*
	 * Sealed at its size: the service maps it too, and a memfd shrunk under
	 * a mapping is SIGBUS for whoever touches the lost pages (docs/interposer.md).
	 */
	memfd = memfd_create("vfio-mig-section", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (memfd < 0) {
		snprintf(why, sizeof(why), "data section memfd (memfd_create): %s", strerror(errno));
		goto err_close_sock;
	}
	if (ftruncate(memfd, (off_t)section_len) < 0) {
		snprintf(why, sizeof(why), "data section memfd (ftruncate): %s", strerror(errno));
		goto err_close_memfd;
	}
	if (fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		snprintf(why, sizeof(why), "data section memfd (sealing): %s", strerror(errno));
		goto err_close_memfd;
	}
	section = real_mmap64(NULL, section_len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (section == MAP_FAILED) {
		snprintf(why, sizeof(why), "data section mmap: %s", strerror(errno));
		goto err_close_memfd;
	}

	mfd = memfd;
	r = call(&sock, VMW_SECTION, 0, 0, &mfd, sizeof(mfd), info, sizeof(info), &got);
	if (r < 0 || got < sizeof(reg)) {
		snprintf(why, sizeof(why), "the service could not set up its region (%s; the service's log says why)", strerror(r < 0 ? -r : EPROTO));
		goto err_unmap;
	}
	memcpy(&reg, info, sizeof(reg));
	if (check_region(&reg, info + sizeof(reg), got - sizeof(reg), num_regions, section_len, why, sizeof(why)))
		goto err_unmap;
	d = calloc(1, sizeof(*d));
	if (!d) {
		snprintf(why, sizeof(why), "out of memory");
		goto err_unmap;
	}
	d->info = malloc(reg.info_len);
	if (!d->info) {
		snprintf(why, sizeof(why), "out of memory");
		goto err_free_dev;
	}
	memcpy(d->info, info + sizeof(reg), reg.info_len);
	d->info_len = reg.info_len;
	d->fd = fd;
	d->owner = getpid();
	snprintf(d->name, sizeof(d->name), "%s", name);
	d->sock = sock;
	d->memfd = memfd;
	d->section = section;
	d->section_len = section_len;
	d->index = reg.index;
	d->region_offset = reg.region_offset;
	d->region_size = reg.region_size;
	d->data_offset = reg.data_offset;
	d->section_size = reg.section_size;
	pthread_mutex_init(&d->lock, NULL);
	return d;

err_free_dev:
	free(d);
err_unmap:
	munmap(section, section_len);
err_close_memfd:
	real_close(memfd);
err_close_sock:
	if (sock >= 0)
		real_close(sock);
	unbridged(name, why);
	return NULL;
}

/* Tells the service the device is done, with the data-access counts it cannot see; lock held. */
static void say_bye(struct dev *d)
{
	struct vmw_bye bye = { d->data_reads, d->data_writes, d->data_mmaps };
	if (d->sock < 0 || getpid() != d->owner) /* e.g. QEMU's exec: migration helper closing inherited fds */
		return;
	call(&d->sock, VMW_BYE, 0, 0, &bye, sizeof(bye), NULL, 0, NULL);
	if (d->sock >= 0)
		real_close(d->sock);
	d->sock = -1;
}

/*
 * Under `vfio-mig exec` the service is not this process's ancestor, which
 * Yama's ptrace_scope 1 requires for its pidfd_getfd: name it as our tracer.
 * Without Yama prctl fails (EINVAL) and nothing is needed. The variable
 * stays: a VMM that COMMAND forks (a wrapper script) needs it too.
 */
__attribute__((constructor)) static void allow_service(void)
{
	const char *v = getenv("VFIO_MIG_PTRACER");
	if (!v)
		return;
	char *end = NULL;
	errno = 0;
	long pid = strtol(v, &end, 10);
	if (*v >= '1' && *v <= '9' && !*end && errno == 0 && pid > 0 && pid <= INT_MAX)
		prctl(PR_SET_PTRACER, (unsigned long)pid, 0, 0, 0);
}

/* A VMM that exits without closing its device fds (QEMU's quit) still says goodbye. */
__attribute__((destructor)) static void bye_all(void)
{
	g_exiting = 1;
	for (int fd = 0; fd < MAX_FD; fd++) {
		struct dev *d = lookup(fd);
		if (d && pthread_mutex_trylock(&d->lock) == 0) {
			say_bye(d);
			pthread_mutex_unlock(&d->lock);
		}
	}
}

static void detach(int fd)
{
	if (fd < 0 || fd >= MAX_FD)
		return;
	pthread_mutex_lock(&g_attach);
	struct dev *d = g_dev[fd];
	__atomic_store_n(&g_dev[fd], NULL, __ATOMIC_RELEASE);
	g_name[fd][0] = 0;
	pthread_mutex_unlock(&g_attach);
	if (!d || d == UNBRIDGED)
		return;
	pthread_mutex_lock(&d->lock);
	say_bye(d);
	/* The VMM's own mappings of the section stay valid after these go. */
	munmap(d->section, d->section_len);
	real_close(d->memfd);
	pthread_mutex_unlock(&d->lock);
	/* d itself is kept: another thread may still hold the pointer. */
}

/* ------------------------------------------------------------ region access */

/* Where an access at `off` of `len` bytes lands: 0 not ours, 1 header, 2 data section, -1 bad. */
static int classify(struct dev *d, off_t off, size_t len, uint64_t *rel)
{
	uint64_t o = (uint64_t)off;
	if (o < d->region_offset || o >= d->region_offset + d->region_size)
		return 0;
	*rel = o - d->region_offset;
	if (len > d->region_size - *rel)
		return -1;
	if (*rel >= d->data_offset)
		return 2;
	return 1;
}

static ssize_t region_rw(struct dev *d, int write, void *buf, size_t len, uint64_t rel, int kind)
{
	if (kind < 0) {
		errno = EINVAL;
		return -1;
	}
	if (kind == 2) {
		/* The hot path of a VMM without mmap: 8 bytes a call, no lock, no locked instruction. */
		uint8_t *p = d->section + (rel - d->data_offset);
		uint64_t *count = write ? &d->data_writes : &d->data_reads;
		if (len == 8) {
			uint64_t v;
			memcpy(&v, write ? buf : p, 8);
			memcpy(write ? p : buf, &v, 8);
		} else if (write) {
			memcpy(p, buf, len);
		} else {
			memcpy(buf, p, len);
		}
		/* A statistic: a lost increment between racing threads is acceptable. */
		__atomic_store_n(count, __atomic_load_n(count, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
		return (ssize_t)len;
	}
	if (len > sizeof(struct vmw_v1_header)) { /* no header access is longer than the header */
		errno = EINVAL;
		return -1;
	}
	pthread_mutex_lock(&d->lock);
	uint32_t got = 0;
	int alive = d->sock >= 0;
	int r = write ? call(&d->sock, VMW_WRITE, rel, len, buf, len, NULL, 0, NULL)
		      : call(&d->sock, VMW_READ, rel, len, NULL, 0, buf, len, &got);
	if (alive && d->sock < 0)
		say("vfio-mig: bridge service %s for %s (request %u at offset 0x%llx): the v1 region of this device now fails with EIO",
		    r == -ETIMEDOUT ? "did not answer in time" : "is gone", d->name, write ? VMW_WRITE : VMW_READ, (unsigned long long)rel);
	pthread_mutex_unlock(&d->lock);
	if (r < 0) {
		errno = -r;
		return -1;
	}
	return write ? (ssize_t)len : (ssize_t)got;
}

static ssize_t do_pread(int fd, void *buf, size_t len, off_t off)
{
	resolve();
	struct dev *d = lookup(fd);
	uint64_t rel;
	int kind;
	if (!d || !(kind = classify(d, off, len, &rel)))
		return real_pread64(fd, buf, len, off);
	return region_rw(d, 0, buf, len, rel, kind);
}

static ssize_t do_pwrite(int fd, const void *buf, size_t len, off_t off)
{
	resolve();
	struct dev *d = lookup(fd);
	uint64_t rel;
	int kind;
	if (!d || !(kind = classify(d, off, len, &rel)))
		return real_pwrite64(fd, buf, len, off);
	return region_rw(d, 1, (void *)buf, len, rel, kind);
}

/* Vectored forms: into the region, one access per iovec, in order. */
static ssize_t do_prwv(int fd, const struct iovec *iov, int n, off_t off, int flags, int write)
{
	resolve();
	struct dev *d = lookup(fd);
	uint64_t rel;
	if (!d || n <= 0 || !classify(d, off, iov[0].iov_len, &rel))
		return write ? real_pwritev64v2(fd, iov, n, off, flags) : real_preadv64v2(fd, iov, n, off, flags);
	ssize_t total = 0;
	for (int i = 0; i < n; i++) {
		int kind = classify(d, off + total, iov[i].iov_len, &rel);
		ssize_t r = kind ? region_rw(d, write, iov[i].iov_base, iov[i].iov_len, rel, kind) : (errno = EINVAL, -1);
		if (r < 0)
			return total ? total : -1;
		total += r;
	}
	return total;
}

/* ------------------------------------------------------------ entry points */

int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	resolve();
	struct dev *d = lookup(fd);
	if (d && req == VFIO_DEVICE_GET_REGION_INFO) {
		struct vfio_region_info *ri = arg;
		if (ri && ri->index == d->index) {
			if (ri->argsz < sizeof(*ri)) {
				errno = EINVAL;
				return -1;
			}
			uint32_t argsz = ri->argsz;
			if (argsz < d->info_len) {
				/* As the kernel: the fixed part, CAPS set, argsz = what is needed, no chain. */
				memcpy(ri, d->info, sizeof(*ri));
				ri->argsz = d->info_len;
				ri->cap_offset = 0;
			} else {
				memcpy(ri, d->info, d->info_len);
				ri->argsz = argsz;
			}
			return 0;
		}
	}
	static int test_mode = -1;
	if (test_mode < 0)
		test_mode = getenv("VFIO_MIG_TEST_DEVICE") != NULL;
	int testdev = test_mode && req == VFIO_DEVICE_GET_INFO && is_vfio_device(fd) == 2;
	int r;
	if (testdev) {
		struct vfio_device_info *info = arg;
		info->flags = VFIO_DEVICE_FLAGS_PCI;
		info->num_regions = VFIO_PCI_NUM_REGIONS;
		info->num_irqs = 0;
		r = 0;
	} else {
		r = real_ioctl(fd, req, arg);
	}
	if (r >= 0 && req == VFIO_GROUP_GET_DEVICE_FD && r < MAX_FD && arg)
		snprintf(g_name[r], NAME_MAX_LEN, "%s", (const char *)arg);
	if (r == 0 && req == VFIO_DEVICE_GET_INFO && fd >= 0 && fd < MAX_FD) {
		struct vfio_device_info *info = arg;
		if (!d) {
			pthread_mutex_lock(&g_attach);
			if (!g_dev[fd]) {
				struct dev *nd = is_vfio_device(fd) ? attach(fd, info->num_regions) : NULL;
				__atomic_store_n(&g_dev[fd], nd ? nd : UNBRIDGED, __ATOMIC_RELEASE);
			}
			pthread_mutex_unlock(&g_attach);
			d = lookup(fd);
		}
		if (d)
			info->num_regions = d->index + 1;
	}
	return r;
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off) { return do_pread(fd, buf, len, off); }
ssize_t pread(int fd, void *buf, size_t len, off_t off) { return do_pread(fd, buf, len, off); }
ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) { return do_pwrite(fd, buf, len, off); }
ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) { return do_pwrite(fd, buf, len, off); }

ssize_t __pread64_chk(int fd, void *buf, size_t len, off_t off, size_t buflen)
{
	if (len > buflen) {
		say("vfio-mig: *** buffer overflow detected in pread ***");
		abort();
	}
	return do_pread(fd, buf, len, off);
}

ssize_t __pread_chk(int fd, void *buf, size_t len, off_t off, size_t buflen) { return __pread64_chk(fd, buf, len, off, buflen); }

ssize_t preadv(int fd, const struct iovec *iov, int n, off_t off) { return do_prwv(fd, iov, n, off, 0, 0); }
ssize_t preadv64(int fd, const struct iovec *iov, int n, off_t off) { return do_prwv(fd, iov, n, off, 0, 0); }
ssize_t preadv2(int fd, const struct iovec *iov, int n, off_t off, int flags) { return do_prwv(fd, iov, n, off, flags, 0); }
ssize_t preadv64v2(int fd, const struct iovec *iov, int n, off_t off, int flags) { return do_prwv(fd, iov, n, off, flags, 0); }
ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off) { return do_prwv(fd, iov, n, off, 0, 1); }
ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t off) { return do_prwv(fd, iov, n, off, 0, 1); }
ssize_t pwritev2(int fd, const struct iovec *iov, int n, off_t off, int flags) { return do_prwv(fd, iov, n, off, flags, 1); }
ssize_t pwritev64v2(int fd, const struct iovec *iov, int n, off_t off, int flags) { return do_prwv(fd, iov, n, off, flags, 1); }

/* The data section's sparse-mmap area maps the shared memfd; the header cannot be mapped. */
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	resolve();
	struct dev *d = lookup(fd);
	uint64_t rel;
	int kind;
	if (!d || !(kind = classify(d, off, len, &rel)))
		return real_mmap64(addr, len, prot, flags, fd, off);
	if (kind != 2) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	__atomic_add_fetch(&d->data_mmaps, 1, __ATOMIC_RELAXED);
	return real_mmap64(addr, len, prot, flags, d->memfd, (off_t)(rel - d->data_offset));
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) { return mmap64(addr, len, prot, flags, fd, off); }

int close(int fd)
{
	resolve();
	if (fd >= 0 && fd < MAX_FD && (__atomic_load_n(&g_dev[fd], __ATOMIC_ACQUIRE) || g_name[fd][0]))
		detach(fd);
	return real_close(fd);
}
