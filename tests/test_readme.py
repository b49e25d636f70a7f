"""The README's code is docs/quickstart.py, verbatim, and it runs."""

import runpy
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_readme_shows_the_quickstart_file_verbatim():
    code = (ROOT / "docs" / "quickstart.py").read_text()
    assert f"```python\n{code}```" in (ROOT / "README.md").read_text()


def test_quickstart_runs_and_lands_on_the_guess(capsys):
    torch.manual_seed(0)
    ns = runpy.run_path(str(ROOT / "docs" / "quickstart.py"))
    torch.testing.assert_close(ns["x"].mean(0), torch.tensor([2.0, -1.0]), atol=0.01, rtol=0)
    assert "tensor" in capsys.readouterr().out
