"""What the Python benchmarks share: their flags, one engramd on a free
loopback port, and a closed-loop rate."""
import argparse
import contextlib
import socket
import subprocess
import time

import engram_store


def bench_args(description: str, add_flags=None):
    """--engramd, --seconds (per figure, split over the rounds), --rounds;
    ``add_flags(parser)`` adds a benchmark's own."""
    p = argparse.ArgumentParser(description=description)
    if add_flags is not None:
        add_flags(p)
    p.add_argument("--engramd", default="build/server/engramd")
    p.add_argument("--seconds", type=float, default=3,
                   help="per figure, split over the rounds")
    p.add_argument("--rounds", type=int, default=5)
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def calls_per_s(fn, seconds: float) -> float:
    """Calls of ``fn`` per second, one after another, after 3 warm-ups."""
    for _ in range(3):
        fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


@contextlib.contextmanager
def engramd(path: str, *flags: str, timeout_s: float = 60):
    """Starts engramd on a free loopback port with ``flags``, yields its
    address once it serves, stops it afterwards."""
    address = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([path, f"--listen={address}",
                               "--metrics_listen=", *flags],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                if engram_store.Client(address, timeout_s=1).health():
                    break
            except engram_store.Error:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"engramd on {address} did not start")
            time.sleep(0.05)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)
