/*
 * A client of the bridge service that changes under it after connect(2),
 * for test/service/peer-trust.test.ts:
 *
 *   peer-client SOCK dropuid   connect as root, become nobody, then HELLO
 *   peer-client SOCK ghost GO  bridge, fork, let the parent exit; the child
 *                              keeps the socket and, once the file GO
 *                              exists, writes device_state 000 through it
 *                              (gives up after a minute without GO)
 *   peer-client SOCK hold      bridge, then stay until stdin closes
 *   peer-client SOCK status    one STATUS query; prints its JSON answer
 *
 * Prints one line per reply: "reply RESULT" or "closed".
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include "wire.h"

static int sock;

static void request(uint32_t op, uint64_t offset, uint32_t length, const void *payload, uint32_t len)
{
	struct vmw_request rq = { .op = op, .payload_len = len, .offset = offset, .length = length };
	if (send(sock, &rq, sizeof(rq), MSG_NOSIGNAL) != sizeof(rq) || (len && send(sock, payload, len, MSG_NOSIGNAL) != (ssize_t)len)) {
		printf("closed\n");
		fflush(stdout);
		exit(0);
	}
}

/* Reads one reply (5 s at most) and prints it; its payload is skipped. */
static void reply(void)
{
	struct vmw_reply rp;
	struct pollfd p = { .fd = sock, .events = POLLIN };
	if (poll(&p, 1, 5000) != 1 || recv(sock, &rp, sizeof(rp), MSG_WAITALL) != sizeof(rp)) {
		printf("closed\n");
		fflush(stdout);
		exit(0);
	}
	char skip[4096];
	for (uint32_t left = rp.payload_len; left;) {
		ssize_t n = recv(sock, skip, left < sizeof(skip) ? left : sizeof(skip), 0);
		if (n <= 0)
			break;
		left -= n;
	}
	printf("reply %d\n", rp.result);
	fflush(stdout);
}

static void hello(void)
{
	struct vmw_hello h = { .pid = getpid(), .fd = 0, .num_regions = 9 };
	request(VMW_HELLO, 0, 0, &h, sizeof(h));
	reply();
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	strncpy(sa.sun_path, argv[1], sizeof(sa.sun_path) - 1);
	sock = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("connect");
		return 1;
	}
	if (!strcmp(argv[2], "dropuid")) {
		if (setgid(65534) || setuid(65534)) {
			perror("setuid");
			return 1;
		}
		hello();
		return 0;
	}
	if (!strcmp(argv[2], "status")) {
		request(VMW_STATUS, 0, 0, NULL, 0);
		struct vmw_reply rp;
		if (recv(sock, &rp, sizeof(rp), MSG_WAITALL) != sizeof(rp) || rp.payload_len > 1 << 20)
			return 1;
		char *text = calloc(1, rp.payload_len + 1);
		if (!text || recv(sock, text, rp.payload_len, MSG_WAITALL) != (ssize_t)rp.payload_len)
			return 1;
		printf("%d %s\n", rp.result, text);
		return 0;
	}
	hello();
	int memfd = memfd_create("section", MFD_ALLOW_SEALING);
	if (memfd < 0 || ftruncate(memfd, 4 << 20) || fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL))
		return 1;
	int32_t m = memfd;
	request(VMW_SECTION, 0, 0, &m, sizeof(m));
	reply();
	if (!strcmp(argv[2], "hold")) {
		char c;
		while (read(0, &c, 1) > 0)
			;
		return 0;
	}
	if (fork() != 0)
		return 0; /* the parent, the process that connected, is gone */
	/* Not stdin: a parent's exit may close the pipe the child shares. A test
	 * that failed before making GO never will: give up after a minute. */
	for (int waited = 0; argc < 4 || access(argv[3], F_OK) != 0; waited++) {
		if (waited == 3000)
			return 1;
		usleep(20000);
	}
	uint32_t stop = 0;
	request(VMW_WRITE, 0, sizeof(stop), &stop, sizeof(stop));
	reply();
	return 0;
}
