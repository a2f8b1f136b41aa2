"""Running the command line as a user does, in a subprocess, and checking its one-line errors."""

import subprocess
import sys


def covidlens(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "covidlens.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
