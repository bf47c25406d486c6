"""Every ```python block of README.md runs (each in a fresh namespace and a subprocess-free exec)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_readme_has_code_blocks() -> None:
    assert len(BLOCKS) >= 7


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index: int) -> None:
    source = BLOCKS[index]
    out = io.StringIO()
    namespace: dict[str, object] = {"__name__": f"readme_block_{index}"}
    with contextlib.redirect_stdout(out):
        exec(compile(source, f"README.md block {index}", "exec"), namespace)
    assert out.getvalue().strip(), "each README example prints what it shows"
