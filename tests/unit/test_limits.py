"""The soft open-files limit is raised to the hard one at start (a fresh process: a child)."""

from __future__ import annotations

import subprocess
import sys


def test_the_soft_limit_rises_to_the_hard_one() -> None:
    code = (
        "import resource\n"
        "from daemon.shell.limits import raise_open_files\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "raised = raise_open_files()\n"
        "now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "assert now == raised > 256, (now, raised, hard)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr
