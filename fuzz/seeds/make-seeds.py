#!/usr/bin/env python3
"""Writes the seed inputs of the virtio fuzz targets (fuzz/seeds/TARGET/),
and of the migration stream's (a hello the receiving side accepts, then
memory frames):
guest memory images whose queues (laid out as fuzz_targets/common.rs puts
them: queue i's 16 descriptors at i*0x200, its available ring at
i*0x200+0x100) carry valid requests, so fuzzing starts from the paths a
real driver takes rather than from random bytes. Inputs are at most 4 KiB
(scripts/fuzz.sh), so the requests lie in 0x800..0x1000, after the four
queues. Run it from anywhere."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
NEXT, WRITE = 1, 2


class Guest:
    def __init__(self, size=0x1000):
        self.b = bytearray(size)

    def desc(self, q, i, addr, ln, flags, nxt=0):
        struct.pack_into('<QIHH', self.b, q * 0x200 + i * 16, addr, ln, flags, nxt)

    def avail(self, q, heads):
        off = q * 0x200 + 0x100
        struct.pack_into('<HH', self.b, off, 0, len(heads))
        for k, h in enumerate(heads):
            struct.pack_into('<H', self.b, off + 4 + 2 * k, h)

    def put(self, addr, data):
        self.b[addr:addr + len(data)] = data

    def save(self, target, name):
        d = os.path.join(HERE, target)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name), 'wb') as f:
            f.write(bytes(self.b))


def block():
    g = Guest()
    heads = []
    # (type, sector, data length, data flags): IN, OUT, FLUSH, GET_ID, DISCARD
    reqs = [(0, 0, 512, WRITE), (1, 1, 512, 0), (4, 0, 0, 0), (8, 0, 20, WRITE), (11, 0, 16, 0)]
    for n, (typ, sector, ln, fl) in enumerate(reqs):
        d = n * 3
        hdr = 0x800 + n * 0x10
        g.put(hdr, struct.pack('<IIQ', typ, 0, sector))
        data = 0x900 + n * 0x80
        if typ == 11:  # one discard segment: sector 2, 4 sectors
            g.put(data, struct.pack('<QII', 2, 4, 0))
        status = 0xc00 + n
        if ln:
            g.desc(0, d, hdr, 16, NEXT, d + 1)
            g.desc(0, d + 1, data, ln, fl | NEXT, d + 2)
        else:
            g.desc(0, d, hdr, 16, NEXT, d + 2)
        g.desc(0, d + 2, status, 1, WRITE)
        heads.append(d)
    g.avail(0, heads)
    g.save('virtio_block', 'read-write-flush-id-discard')


def rng():
    g = Guest()
    g.desc(0, 0, 0x800, 64, WRITE)
    g.desc(0, 1, 0x900, 32, WRITE | NEXT, 2)
    g.desc(0, 2, 0xa00, 32, WRITE)
    g.avail(0, [0, 1])
    g.save('virtio_rng', 'two-requests')


def net():
    g = Guest()
    # Receive buffers (queue 0) and one frame to send (queue 1): a 12-byte
    # virtio-net header, then an Ethernet frame.
    for i in range(4):
        g.desc(0, i, 0x10000 + i * 0x800, 0x800, WRITE)
    g.avail(0, [0, 1, 2, 3])
    frame = bytes.fromhex('ffffffffffff060000000001') + b'\x08\x06' + bytes(46)
    g.put(0x800, bytes(12))
    g.put(0x810, frame)
    g.desc(1, 0, 0x800, 12, NEXT, 1)
    g.desc(1, 1, 0x810, len(frame), 0)
    g.avail(1, [0])
    g.save('virtio_net', 'rx-buffers-and-one-frame')


def balloon():
    g = Guest()
    # Inflate (0) and deflate (1): page frame numbers; stats (2): tag/value
    # pairs; free page reporting (3): pages given back.
    g.put(0x800, struct.pack('<4I', 0x100, 0x101, 0x102, 0x103))
    g.desc(0, 0, 0x800, 16, 0)
    g.avail(0, [0])
    g.desc(1, 0, 0x800, 8, 0)
    g.avail(1, [0])
    g.put(0x900, struct.pack('<HQHQ', 4, 1 << 20, 5, 1 << 19))
    g.desc(2, 0, 0x900, 20, 0)
    g.avail(2, [0])
    g.desc(3, 0, 0x200000, 0x200000, WRITE)
    g.avail(3, [0])
    g.save('virtio_balloon', 'inflate-deflate-stats-report')

    # Regression (found by the campaign): one inflate descriptor spanning
    # all of guest memory, listing page 0 a quarter million times, took
    # 0.4 s (a madvise per entry) and timed out under load.
    g = Guest()
    g.desc(0, 0, 0x800, 0x03000010, 0)
    g.avail(0, [0])
    g.save('virtio_balloon', 'regression-long-page-list')


def vsock():
    g = Guest()

    def pkt(addr, op, payload=b'', flags=0):
        # Guest CID 3 to the host (2), port 1000 to port 1 (a listener the
        # fuzz harness keeps), a stream packet with 64 KiB of credit.
        g.put(addr, struct.pack('<QQIIIHHIII', 3, 2, 1000, 1, len(payload), 1, op, flags, 65536, 0) + payload)
        return 44 + len(payload)

    for i in range(4):
        g.desc(0, i, 0xc00 + i * 0x100, 0x100, WRITE)
    g.avail(0, [0, 1, 2, 3])
    # REQUEST, RW with data, CREDIT_REQUEST, SHUTDOWN (both directions)
    for i, (addr, op, data, fl) in enumerate([(0x800, 1, b'', 0), (0x840, 5, b'hello vsock fuzz', 0),
                                               (0x8a0, 7, b'', 0), (0x900, 4, b'', 3)]):
        g.desc(1, i, addr, pkt(addr, op, data, fl), 0)
    g.avail(1, [0, 1, 2, 3])
    g.save('virtio_vsock', 'connect-send-shutdown')


def migration():
    """A hello for 32 MiB at 0 with no CPUID (the fuzz target accepts it),
    then memory frames: runs of pages (a run header: guest address u64,
    page count u32), as protocol.rs frames them."""
    def frame(kind, body):
        return b'CMIG' + struct.pack('<IQ', kind, len(body)) + body
    hello = json.dumps({
        'version': 2, 'condo': 'seed',
        'machine': {'vcpu_count': 1, 'mem_size_mib': 32, 'track_dirty_pages': False,
                    'kernel_image_path': '/k', 'initrd_path': None, 'boot_args': None,
                    'root_drive': None},
        'memory': [{'base': 0, 'size': 32 << 20}],
        'cpuid': [],
    }, separators=(',', ':')).encode()

    def run(gpa, pages, byte):
        return struct.pack('<QI', gpa, pages) + bytes([byte]) * (4096 * pages)
    d = os.path.join(HERE, 'migration_stream')
    os.makedirs(d, exist_ok=True)
    for name, data in [
        ('hello-memory', frame(1, hello) + frame(4, run(0x1000, 1, 0x11) + run(0x3000, 2, 0x22))),
        ('hello-memory-state', frame(1, hello) + frame(4, run(0x1ff000, 1, 0x33)) + frame(5, b'{}')),
    ]:
        with open(os.path.join(d, name), 'wb') as f:
            f.write(data)


block()
rng()
vsock()
net()
balloon()
migration()
