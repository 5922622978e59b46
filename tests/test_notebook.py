"""Keeps notebooks/quickstart.ipynb alive: executes it top to bottom with nbclient.

The kernel is this interpreter (a temporary ``python3`` kernelspec whose argv is
``sys.executable``), so the notebook sees the same installed package as the
tests. ``FEDJAX_COMP_NOTEBOOK_QUICK=1`` makes the notebook run 10 rounds per
codec instead of 100 (about 50 s here once MNIST-1D is cached; the full notebook
takes under 3 minutes on a 2-core CPU, first MNIST-1D generation included).
"""

import json
import math
import pathlib
import sys

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
CODEC = "hadamard(flatten=true,block=1024),quantize(bits=2)"
_PROBE = "import json, sys; print('KERNEL_PYTHON ' + json.dumps([sys.executable, sys.prefix]))"


def _kernel_manager(tmp_path: pathlib.Path) -> KernelManager:
  """A KernelManager whose ``python3`` kernel runs this test's interpreter."""
  spec_dir = tmp_path / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (fedjax_comp tests)",
      "language": "python",
  }))
  specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
  return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _text(cell) -> str:
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _cell(nb, cell_id: str):
  matches = [c for c in nb.cells if c.get("id") == cell_id]
  assert len(matches) == 1, f"no unique cell with id {cell_id!r}"
  return matches[0]


def _table(text: str) -> dict[str, tuple[int, float, float, float]]:
  """The summary table: spec -> (bits per client per round, ratio, uplink MB, accuracy)."""
  rows = {}
  for line in text.splitlines():
    fields = line.split()
    if len(fields) == 5 and fields[2].endswith("x"):
      rows[fields[0]] = (int(fields[1].replace(",", "")), float(fields[2][:-1]),
                         float(fields[3]), float(fields[4]))
  return rows


def test_notebook_is_saved_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (
          f"cell {cell.get('id')!r} has outputs: clear them before committing")


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  monkeypatch.setenv("FEDJAX_COMP_NOTEBOOK_QUICK", "1")  # read by the notebook: 10 rounds
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nb.cells.append(nbformat.v4.new_code_cell(_PROBE, id="test-probe"))
  client = nbclient.NotebookClient(nb, km=_kernel_manager(tmp_path), timeout=600,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError on the first failing cell

  errors = [(c.get("id"), o) for c in nb.cells if c.cell_type == "code"
            for o in c.outputs if o.output_type == "error"]
  assert not errors, errors

  executable, prefix = json.loads(_text(_cell(nb, "test-probe")).split("KERNEL_PYTHON ", 1)[1])
  assert (executable, prefix) == (sys.executable, sys.prefix), "the kernel ran another Python"

  plot = _cell(nb, "plot")
  assert any("image/png" in o.get("data", {}) for o in plot.outputs), "no plot was shown"

  table = _table(_text(_cell(nb, "table")))
  assert CODEC in table and "none" in table, table
  bits, ratio, uplink_mb, accuracy = table[CODEC]
  assert ratio > 10, table
  assert table["none"][1] == 1.0, table
  assert 0 < uplink_mb < table["none"][2], table
  for spec, (_, _, _, acc) in table.items():
    assert math.isfinite(acc) and 0.1 < acc <= 1.0, (spec, table)
