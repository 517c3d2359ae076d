"""A real Ray head for the cluster tests: ``ray start --head --block`` on a free port, in its own
temp dir and process session, stopped without touching any other Ray process on the machine."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RAY_ENV_PREFIXES = ("RAY_",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any RAY_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(RAY_ENV_PREFIXES)}
    env.update(extra)
    return env


def session_processes(sid: int) -> list[str]:
    """``pid command`` of every live process in session ``sid`` (the head and all it started)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,comm="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines() if line.strip()]
    return [f"{r[0]} {r[3] if len(r) > 3 else ''}" for r in rows
            if len(r) >= 3 and r[1] == str(sid) and not r[2].startswith("Z")]


@dataclass
class Head:
    proc: subprocess.Popen
    port: int
    temp_dir: Path
    env: dict[str, str]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.temp_dir / "head.out"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> list[str]:
        """SIGTERM the blocking ``ray start`` (it stops its head); returns what was still alive after
        30 s (then killed). Only this head's session is touched."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.time() + 15
        while session_processes(self.proc.pid) and time.time() < deadline:
            time.sleep(0.5)
        left = session_processes(self.proc.pid)
        if left:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left


def start_head(token_file: Path | None, num_cpus: int = 2, timeout: float = 90) -> Head:
    """A head with token authentication (``token_file`` holds its token) or without (None)."""
    # Short, private temp dir: Ray's socket paths must stay under the 107-byte limit.
    temp_dir = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    port = free_port()
    if token_file is None:
        env = clean_env(RAY_AUTH_MODE="disabled")
    else:
        env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    ray_cli = str(Path(sys.executable).with_name("ray"))
    cmd = [ray_cli if os.path.exists(ray_cli) else "ray", "start", "--head", "--block", f"--port={port}",
           f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp_dir}",
           "--disable-usage-stats"]
    out = open(temp_dir / "head.out", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(proc, port, temp_dir, env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{head.log()}")
        if "Ray runtime started" in head.log():  # printed once GCS, raylet and agents are up
            return head
        time.sleep(0.3)
    head.stop()
    raise RuntimeError(f"the Ray head did not listen on {port} within {timeout} s:\n{head.log()}")
