"""Output files (`vrp.files`): an atomic write that cannot happen is a VrpError naming the path."""
from __future__ import annotations

import pytest

from vrp.errors import VrpError


def test_atomic_write_errors_are_vrp_errors(tmp_path) -> None:
    from vrp.files import write_text_atomic

    (tmp_path / "d").mkdir()
    with pytest.raises(VrpError, match="is a directory"):
        write_text_atomic(tmp_path / "d", "x")
    (tmp_path / "f").write_text("x")
    with pytest.raises(VrpError, match="cannot write"):
        write_text_atomic(tmp_path / "f" / "child.txt", "x")
