"""Joining an existing Ray cluster (``--address HOST:PORT`` or ``auto``) with one-line errors.

``ray.init(address=...)`` on its own meets a user with a wall of C++ log lines and a traceback
whenever the connection cannot work. This module connects the way the harness wants:

* **token authentication** (Ray >= 2.59 turns it on for clusters started with ``ray start``) is
  Ray's own: the driver sends a token when ``RAY_AUTH_MODE=token`` (Ray also does for
  ``--address auto`` when a token exists). It is not switched on behind the user's back: a driver
  that sends a token to a cluster *without* authentication joins it and then cannot start a single
  actor, so a guess either way breaks one kind of cluster. ``RAY_AUTH_MODE=token`` without a token
  fails before Ray is touched.
* **preflight**: ``HOST:PORT`` that nothing listens on fails in seconds, before Ray is touched.
* **the connection itself** runs with the process's stderr (file descriptor 2, where Ray's C++
  core logs) captured; a failure becomes one ``UsageError`` line saying what to set or start —
  no token, a refused token, a Ray or Python version mismatch, no running cluster for ``auto`` —
  and the captured lines are dropped. On success they are passed through unchanged.
* **a probe**: one zero-CPU actor must start (every Tune trial is an actor); a token sent to a
  cluster without authentication fails here, with the line that says to stop sending it.

A refused token shows only after Ray's connection attempts (``JOIN_ATTEMPTS`` of about a second
each, shortened from Ray's 20 because the preflight already found the port open); everything
else fails faster.
"""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.config import UsageError

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
JOIN_ATTEMPTS = 8  # one per second (Ray's default is 20)
AUTH_HELP = ("copy the cluster's token (print it on the head with `ray get-auth-token`) into ~/.ray/auth_token "
             "on this machine, or export RAY_AUTH_TOKEN=<token> (or RAY_AUTH_TOKEN_PATH=<file>), and export "
             "RAY_AUTH_MODE=token; see README 'Cluster'")


def token_source() -> str | None:
    """Where this process would read a Ray auth token from, or None if it has none."""
    if os.environ.get(TOKEN_ENV, "").strip():
        return f"${TOKEN_ENV}"
    path = os.environ.get(TOKEN_PATH_ENV)
    if path:
        return path if Path(path).expanduser().is_file() else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


def describe_auth() -> str:
    """One line on what this driver will send; raises when ``RAY_AUTH_MODE=token`` has no token."""
    mode = os.environ.get(AUTH_MODE)
    source = token_source()
    if mode is not None and mode.lower() == "token":
        if source is None:
            raise UsageError(f"RAY_AUTH_MODE=token but this machine has no Ray token: {AUTH_HELP}")
        return f"token authentication (RAY_AUTH_MODE=token, token from {source})"
    if mode is not None:
        return f"no token (RAY_AUTH_MODE={mode})"
    return "no token (RAY_AUTH_MODE unset" + (f"; a token exists at {source})" if source else ")")


def split_address(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` -> (host, port); ``auto`` (or ``ray://``, or no port) -> None (Ray resolves it)."""
    if address == "auto" or "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    try:
        value = int(port)
    except ValueError:
        raise UsageError(f"--address must be auto or HOST:PORT, got {address!r}") from None
    if not host or not 0 < value < 65536:
        raise UsageError(f"--address must be auto or HOST:PORT, got {address!r}")
    return host.strip("[]"), value


def preflight(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at ``HOST:PORT`` (``auto`` is left to Ray)."""
    if address == "auto" and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    target = split_address(address)
    if target is None:
        return
    host, port = target
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise UsageError(f"no Ray cluster answers at {host}:{port} ({err.strerror or err}): start the head there "
                         f"with `ray start --head --port={port}`, or pass the head's address to --address") from None


@contextlib.contextmanager
def captured_stderr() -> Iterator[Callable[[], str]]:
    """Redirect file descriptor 2 (Python's and the C++ core's stderr) to a temporary file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)

        def text() -> str:
            sys.stderr.flush()
            tmp.seek(0)
            return tmp.read().decode("utf-8", errors="replace")

        try:
            yield text
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def explain(address: str, err: BaseException, log: str, auth: str) -> str:
    """The one line a failed connection becomes."""
    message = f"{type(err).__name__}: {err}"
    if "InvalidAuthToken" in log or "Authentication token is missing or incorrect" in log \
            or "AuthenticationError" in message:
        if os.environ.get(AUTH_MODE, "").lower() == "token":
            return (f"the Ray cluster at {address} refused this driver's token ({auth}): it is not the "
                    f"cluster's token; {AUTH_HELP}")
        source = token_source()
        if source is not None:
            return (f"the Ray cluster at {address} requires token authentication: export RAY_AUTH_MODE=token "
                    f"(this machine has a token at {source}; it must be the head's, see `ray get-auth-token` there)")
        return f"the Ray cluster at {address} requires token authentication and this driver has no token: {AUTH_HELP}"
    if "Version mismatch" in message:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip().startswith(("Ray:", "Python:"))]
        seen = ", ".join(lines) if lines else str(err).splitlines()[0]
        return (f"Ray or Python version mismatch with the cluster at {address} (cluster, then this driver: {seen}): "
                "run the driver with the cluster's Ray and Python versions")
    if "Could not find any running Ray instance" in message:
        return ("--address auto found no running Ray cluster on this machine: start one with `ray start --head`, "
                "set RAY_ADDRESS=HOST:PORT, or pass --address HOST:PORT")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (f"could not join the Ray cluster at {address}: {first}; check that the head runs (`ray status` "
            "there) and that this machine can reach it")


def connect(address: str, init_kwargs: dict[str, Any]) -> None:
    """``ray.init(address=address, **init_kwargs)`` or a ``UsageError`` with one line."""
    import ray

    auth = describe_auth()
    preflight(address)
    print(f"joining the Ray cluster at {address}: {auth}")
    # The port answered (preflight), so the head's GCS is up: Ray's 20 one-second connection
    # attempts only delay the report of a refused token. A user's own setting wins.
    wait_key = "RAY_gcs_server_port_wait_time_s"
    own_wait = os.environ.get(wait_key)
    os.environ.setdefault(wait_key, str(JOIN_ATTEMPTS))
    with captured_stderr() as log:
        try:
            ray.init(address=address, **init_kwargs)
            failure: BaseException | None = None
        except (ConnectionError, RuntimeError, ValueError, OSError, ray.exceptions.RayError) as err:
            failure = err
        finally:
            if own_wait is None:
                os.environ.pop(wait_key, None)
        text = log()
    if failure is not None:
        raise UsageError(explain(address, failure, text, auth)) from None
    if text.strip():
        sys.stderr.write(text)
    probe(address, auth)


def probe(address: str, auth: str, timeout: float = 60.0) -> None:
    """Start one zero-CPU actor: what every Tune trial needs. A driver that sends a token to a
    cluster started without authentication joins, then cannot start any actor."""
    import ray

    @ray.remote(num_cpus=0)
    class Probe:
        def ping(self) -> int:
            return 1

    actor = None
    try:
        actor = Probe.remote()  # type: ignore[attr-defined]
        ray.get(actor.ping.remote(), timeout=timeout)
    except Exception as err:
        ray.shutdown()
        hint = ("the cluster runs without token authentication while this driver sends a token: unset "
                "RAY_AUTH_MODE or set RAY_AUTH_MODE=disabled for the driver" if "token" in auth and "no token" not in auth
                else "check `ray status` on the head")
        raise UsageError(f"joined the Ray cluster at {address} but it could not start an actor for this driver "
                         f"({type(err).__name__}); {hint}") from None
    finally:
        if actor is not None and ray.is_initialized():
            ray.kill(actor)
