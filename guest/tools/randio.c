/*
 * condo's guest-side random I/O tool (static, for the benchmark guest).
 *
 *   randio read|write DEVICE COUNT
 *
 * Does COUNT 4 KiB reads or writes at random 4 KiB-aligned offsets of
 * DEVICE with O_DIRECT (one at a time, queue depth 1, like fio's
 * psync engine at iodepth=1), then fsyncs; prints "randio <op> <count>".
 * The offsets come from a fixed-seed generator, so every run does the same
 * I/O.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/fs.h>

int main(int argc, char **argv) {
	if (argc != 4 || (strcmp(argv[1], "read") && strcmp(argv[1], "write"))) {
		fprintf(stderr, "usage: randio read|write DEVICE COUNT\n");
		return 2;
	}
	int writing = !strcmp(argv[1], "write");
	long count = atol(argv[3]);
	int fd = open(argv[2], (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "randio: open %s: %s\n", argv[2], strerror(errno));
		return 1;
	}
	uint64_t size = 0;
	if (ioctl(fd, BLKGETSIZE64, &size) || size < 4096) {
		off_t end = lseek(fd, 0, SEEK_END);
		size = end > 0 ? (uint64_t)end : 0;
	}
	uint64_t blocks = size / 4096;
	if (blocks == 0) {
		fprintf(stderr, "randio: %s is empty\n", argv[2]);
		return 1;
	}
	void *buf;
	if (posix_memalign(&buf, 4096, 4096))
		return 1;
	memset(buf, 0x5a, 4096);
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (long i = 0; i < count; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		off_t off = (off_t)(x % blocks) * 4096;
		ssize_t n = writing ? pwrite(fd, buf, 4096, off) : pread(fd, buf, 4096, off);
		if (n != 4096) {
			fprintf(stderr, "randio: %s at %lld: %s\n", argv[1], (long long)off,
				n < 0 ? strerror(errno) : "short");
			return 1;
		}
	}
	if (writing && fsync(fd)) {
		fprintf(stderr, "randio: fsync: %s\n", strerror(errno));
		return 1;
	}
	printf("randio %s %ld\n", argv[1], count);
	return 0;
}
