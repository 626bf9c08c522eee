"""Start the app in a child process on a free loopback port, and stop it again."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PORT_TAKEN = ("eaddrinuse", "address already in use")


def run_on_free_port(command: Callable[[int], list[str]], attempts: int = 3, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(command(port))` with text output captured, on a free port. Another process
    may take the port between `free_port` and the child's bind, a race no port picker can close, so a
    run that fails for that reason alone runs again on a new port; any other failure is returned."""
    for attempt in range(1, attempts + 1):
        done = subprocess.run(command(free_port()), capture_output=True, text=True, **kwargs)
        if done.returncode == 0 or attempt == attempts or not any(s in done.stderr.lower() for s in PORT_TAKEN):
            return done
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running_app(*args: str, env: dict | None = None, timeout: float = 120, attempts: int = 3):
    """Run `python app.py --port P ARGS` and yield its URL once it answers. The port can be taken
    while the app loads its model (see `run_on_free_port`); then it starts again on another."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            output = wait_until_it_answers(process, url, timeout)
            if output is None:
                yield url
                return
            if attempt == attempts or not any(s in output.lower() for s in PORT_TAKEN):
                raise RuntimeError(f"app exited with {process.returncode}:\n{output}")
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_until_it_answers(process: subprocess.Popen, url: str, timeout: float) -> str | None:
    """None once `url` answers; the process's output if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            return process.stdout.read()
        try:
            urllib.request.urlopen(url, timeout=2)
            return None
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"app did not answer on {url} within {timeout} s")
            time.sleep(0.5)


@contextlib.contextmanager
def serving(asgi_app):
    """Serve an ASGI app (the API with the UI mounted) from a thread; yield its URL."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def launched(service, model_spec: str = "default"):
    """The Gradio UI around `service`, launched in-process on a free port; yield its URL."""
    import app

    demo = app.build_app(service, model_spec).queue()
    for attempt in range(1, 4):  # the port may be taken after `free_port`, or start-up pass Gradio's 5 s
        port = free_port()
        try:
            demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, i18n=app.I18N)
            break
        except OSError:
            if attempt == 3:
                raise
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def gradio_client(url: str, **kwargs):
    """A `gradio_client.Client` that waits up to a minute for each HTTP reply (its default, 5 s, is
    too short on a busy 2-core machine)."""
    from gradio_client import Client

    return Client(url, verbose=False, httpx_kwargs={"timeout": 60}, **kwargs)
