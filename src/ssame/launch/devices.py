"""Node-local claims on GPUs and rendezvous ports, so concurrent jobs on one machine never share either.

A claim is an exclusive `filelock` on `<lock dir>/device-<id>.lock` or `port-<n>.lock`, held by the launcher for the
job's lifetime; the OS drops it when that process ends, however it ends. The lock directory is node-local
($SSAME_LOCK_DIR, default a per-user folder under the system temp dir).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

BASE_PORT = 29500  # torch.distributed's and accelerate's default rendezvous port
PORT_SPAN = 1000


class LaunchError(RuntimeError):
    """A job cannot get the devices, port or nodes it asks for."""


def lock_dir() -> Path:
    path = Path(os.environ.get("SSAME_LOCK_DIR") or Path(tempfile.gettempdir()) / f"ssame-locks-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def visible_devices() -> list[str]:
    """The devices this process may use: $CUDA_VISIBLE_DEVICES (set by SLURM, or by hand) or every GPU torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _try_lock(path: Path, stack: ExitStack) -> bool:
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    stack.callback(lock.release)
    return True


@contextmanager
def claim_devices(count: int, pool: list[str], poll_s: float = 2.0) -> Iterator[list[str]]:
    """Hold `count` devices of `pool` that no other ssame job on this node holds, waiting until enough are free."""
    if count > len(pool):
        raise LaunchError(f"the job asks for {count} GPU(s) but this node shows {len(pool)} "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    waited = False
    while True:
        with ExitStack() as stack:
            held: list[str] = []
            for device in pool:
                if len(held) < count and _try_lock(lock_dir() / f"device-{device}.lock", stack):
                    held.append(device)
            if len(held) == count:
                yield held
                return
        if not waited:
            print(f"ssame launch: waiting for {count} free GPU(s) of {pool}", file=sys.stderr, flush=True)
            waited = True
        time.sleep(poll_s)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


@contextmanager
def claim_port(first: int = BASE_PORT) -> Iterator[int]:
    """Hold a rendezvous port no other ssame job on this node holds and nothing listens on, from `first` upwards."""
    for port in range(first, first + PORT_SPAN):
        with ExitStack() as stack:
            if _try_lock(lock_dir() / f"port-{port}.lock", stack) and _bindable(port):
                yield port
                return
    raise LaunchError(f"no free rendezvous port in {first}-{first + PORT_SPAN - 1} (locks in {lock_dir()})")
