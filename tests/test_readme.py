"""The README's library examples run as written (on a real kernel)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_kernel_manager_example_runs_as_written() -> None:
    [block] = [b for b in _python_blocks() if "with KernelManager(" in b]
    script = textwrap.dedent(block) + textwrap.dedent("""
        assert reply["content"]["status"] == "ok", reply
        assert not km.is_alive()
        print("ok")
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
