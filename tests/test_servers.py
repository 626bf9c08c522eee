"""The test helpers' own behaviour where a mistake would hide real failures."""

import socket
import sys

from servers import run_on_free_port

BIND = "import socket, sys; socket.socket().bind(('127.0.0.1', int(sys.argv[1]))); print('bound', sys.argv[1])"


def test_a_run_whose_port_was_taken_runs_again_on_another_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        taken = holder.getsockname()[1]
        ports = []

        def command(port: int) -> list[str]:
            ports.append(taken if not ports else port)  # the first "free" port is taken meanwhile
            return [sys.executable, "-c", BIND, str(ports[-1])]

        done = run_on_free_port(command)
    assert done.returncode == 0 and len(ports) == 2 and ports[0] == taken
    assert done.stdout.strip() == f"bound {ports[1]}"


def test_other_failures_are_returned_at_once():
    calls = []

    def command(port: int) -> list[str]:
        calls.append(port)
        return [sys.executable, "-c", "raise SystemExit('broken for its own reasons')"]

    done = run_on_free_port(command)
    assert done.returncode == 1 and "broken for its own reasons" in done.stderr and len(calls) == 1
