"""The CLI's exit shortcut (gc.freeze before the interpreter's teardown) applies only when the
`snapcell` command is the process, never to a caller of `main` in a longer-lived process."""

from __future__ import annotations

import gc

from click.testing import CliRunner

from snapcell.cli import _is_the_process, main


def test_in_process_callers_are_not_frozen() -> None:
    assert not _is_the_process()
    before = gc.get_freeze_count()
    r = CliRunner().invoke(main, ["run", "--lang", "python"])      # no code: a usage error
    assert r.exit_code == 2 and "give the code" in r.output
    assert gc.get_freeze_count() == before
