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
def running_app(*args: str, env: dict | None = None, timeout: float = 120):
    """Run `python app.py --port P ARGS` and yield its URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app exited with {process.returncode}:\n{process.stdout.read()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"app did not answer on {url} within {timeout} s")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


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

    demo = app.build_app(service, model_spec)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, i18n=app.I18N)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
