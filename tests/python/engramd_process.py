"""One engramd on a free loopback port for scripts that run without pytest
(the torch test and bench on the GPU machine)."""
import os
import socket
import subprocess
import time

import engram_store

ENGRAMD = os.environ.get("ENGRAM_TEST_ENGRAMD", "engramd")


class Server:
    """One engramd on loopback, stopped by stop()."""

    def __init__(self, *flags, engramd=None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [engramd or ENGRAMD, f"--listen={self.address}",
             "--metrics_listen=", *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if engram_store.Client(self.address, timeout_s=1).health():
                    return
            except engram_store.Error:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("engramd did not start")

    def client(self):
        return engram_store.Client(self.address)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
