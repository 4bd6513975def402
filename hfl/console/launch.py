"""`hfl console`: start the Streamlit app on 127.0.0.1:8501 (unless told otherwise), password required."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hfl.console.auth import NoPassword, password_from_env

APP = Path(__file__).with_name("app.py")
WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # every interface (the console container listens so)


def streamlit_command(address: str, port: int) -> list[str]:
    """The command line that serves the app; XSRF protection is left on (never passed as false)."""
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", address,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--server.enableXsrfProtection", "true",
    ]  # fmt: skip
    if address in WILDCARDS:
        # Headless on every interface, Streamlit asks checkip.amazonaws.com for this machine's public
        # address to print an "External URL" (and logs "Did not auto detect external IP" in an isolated
        # network): a hospital's console must not call out. Naming the address it prints avoids that.
        cmd += ["--browser.serverAddress", "localhost"]
    return cmd


def run_console(
    address: str, port: int, run: str | None, leader: str | None, authority: str | None, cert_dir: str | None
) -> int:
    """Check the password is set, then become the Streamlit server (returns only when refused)."""
    try:
        password_from_env()
    except NoPassword as e:
        print(e)
        return 2
    if address in WILDCARDS:
        where_ = f"listening on port {port} of every interface; on this machine: http://127.0.0.1:{port}"
    else:
        where_ = f"http://{address}:{port}"
    print(f"Console: {where_}  (sign in with the password in HFL_CONSOLE_PASSWORD)", flush=True)
    where = {"RUN": run, "LEADER": leader, "AUTHORITY": authority, "CERT_DIR": cert_dir}
    env = {**os.environ, **{f"HFL_CONSOLE_{k}": v for k, v in where.items() if v}}
    cmd = streamlit_command(address, port)
    # Streamlit takes this process's place (no child left behind): a stop signal from a container
    # engine, a service manager or `kill` reaches the server itself, and its exit status is ours.
    os.execve(cmd[0], cmd, env)
