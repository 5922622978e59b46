"""The README's library snippet runs as printed (it is the first thing a new user tries)."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
  text = README.read_text()
  section = text[text.index("## Library in a few lines"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_library_snippet_runs(capsys):
  namespace = {}
  exec(compile(_snippet(), "README.md", "exec"), namespace)  # pylint: disable=exec-used
  history = namespace["history"]
  assert history.rounds_done == 100 and history.error is None
  assert [e["round"] for e in history.evals] == list(range(10, 101, 10))
  assert 0.3 < history.final_eval["accuracy"] <= 1.0
  assert "'accuracy'" in capsys.readouterr().out
