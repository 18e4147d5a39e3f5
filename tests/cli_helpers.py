"""Run the real `qllama` command line in a subprocess, as a user would."""
import subprocess
import sys


def qllama(*args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "qllama.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def assert_one_line_error(result, *fragments):
    """Non-zero exit, no traceback, one line on stderr naming what is wrong."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
