"""Run a test file as W worker processes of one gloo process group on this machine (what a W-task job does)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_workers(script: str, args: list[str], timeout_s: float, world_size: int = 2) -> None:
    """``python script *args`` as ranks 0..W-1 (RANK, WORLD_SIZE, MASTER_* set; one thread each); fails the test
    with a worker's output if any worker fails or outlives ``timeout_s``."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = os.environ | {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        env.pop("SUBMITIT_EXECUTOR", None)
        procs.append(subprocess.Popen([sys.executable, script, *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [proc.communicate(timeout=timeout_s)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, output) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{output}"
