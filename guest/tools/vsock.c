/*
 * condo's guest-side vsock test tool (static, for the test initramfs).
 *
 *   vsock listen PORT         accept one connection on PORT, echo everything
 *                             it sends back to it, exit when it closes
 *   vsock connect CID PORT    connect to CID:PORT, send stdin (then shut the
 *                             write side), copy what comes back to stdout
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int die(const char *what) {
	fprintf(stderr, "vsock: %s: %s\n", what, strerror(errno));
	return 1;
}

static int write_all(int fd, const char *p, ssize_t n) {
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= w;
	}
	return 0;
}

static int echo(int fd) {
	static char buf[65536];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return die("read");
		if (n == 0)
			return 0;
		if (write_all(fd, buf, n))
			return die("write");
	}
}

/* stdin to the socket, the socket to stdout, until the peer closes. */
static int pump(int fd) {
	static char buf[65536];
	int in_open = 1;
	for (;;) {
		struct pollfd p[2] = {{fd, POLLIN, 0}, {0, POLLIN, 0}};
		if (poll(p, in_open ? 2 : 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			return die("poll");
		}
		if (p[0].revents) {
			ssize_t n = read(fd, buf, sizeof buf);
			if (n < 0)
				return die("read");
			if (n == 0)
				return 0;
			if (write_all(1, buf, n))
				return die("write stdout");
		}
		if (in_open && p[1].revents) {
			ssize_t n = read(0, buf, sizeof buf);
			if (n < 0)
				return die("read stdin");
			if (n == 0) {
				in_open = 0;
				shutdown(fd, SHUT_WR);
			} else if (write_all(fd, buf, n)) {
				return die("write");
			}
		}
	}
}

int main(int argc, char **argv) {
	struct sockaddr_vm a = {.svm_family = AF_VSOCK};
	int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (fd < 0)
		return die("socket");
	if (argc == 3 && !strcmp(argv[1], "listen")) {
		a.svm_cid = VMADDR_CID_ANY;
		a.svm_port = atoi(argv[2]);
		if (bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 1))
			return die("listen");
		printf("vsock: listening on %u\n", a.svm_port);
		fflush(stdout);
		int c = accept(fd, NULL, NULL);
		if (c < 0)
			return die("accept");
		return echo(c);
	}
	if (argc == 4 && !strcmp(argv[1], "connect")) {
		a.svm_cid = atoi(argv[2]);
		a.svm_port = atoi(argv[3]);
		if (connect(fd, (struct sockaddr *)&a, sizeof a))
			return die("connect");
		return pump(fd);
	}
	fprintf(stderr, "usage: vsock listen PORT | vsock connect CID PORT\n");
	return 2;
}
