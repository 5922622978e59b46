"""scripts/plot.py and experiment.plotting: redraws, overlays, the README block, and the
three plot bugs users reported (legend over the x label, log x at 0, --out=DIR)."""

from __future__ import annotations

import importlib.util
import pathlib

import matplotlib.pyplot as plt
import pytest

from fedjax_comp.experiment import configs, federated, plotting

_spec = importlib.util.spec_from_file_location(
    "plot_script", pathlib.Path(__file__).resolve().parents[1] / "scripts" / "plot.py")
plot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plot)

TINY = configs.FederatedConfig(
    data=configs.DataConfig(dataset="digits", partition="iid", num_clients=20),
    train=configs.TrainConfig(model="logistic", clients_per_round=5, rounds=3, local_epochs=1,
                              batch_size=10, client_lr=0.05),
    run=configs.RunConfig(eval_every=1, checkpoint_every=0),
    network=configs.NetworkConfig(network="none"))
SPECS = ["none", "hadamard(flatten=true,block=1024),quantize(bits=1)",
         "subsample(p=1/16),hadamard(flatten=true,block=1024),quantize(bits=2)",
         "low_rank(rank=4)", "random_mask(p=0.01234)"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("runs")
  a, b = base / "a", base / "b"
  federated.run(TINY, str(a), say=None)
  federated.run(TINY.replace(codec="quantize(bits=2)"), str(b), say=None)
  return a, b


def test_redraws_and_overlays(two_runs, tmp_path):
  a, b = two_runs
  assert plot.main([str(a)]) == 0 and (a / "accuracy.png").stat().st_size > 1000
  out = tmp_path / "both.png"
  assert plot.main([str(a), str(b), "--x=uplink_mb", f"--out={out}"]) == 0
  assert out.stat().st_size > 1000
  # Labels are the runs' codecs; x is the cumulative uplink the runs logged.
  assert plot._labels([(a, plot.results.read_result(a)), (b, plot.results.read_result(b))]) == [
      "none", "quantize(bits=2)"]
  xs, _ = plot.fedavg_series(b, "uplink_mb")
  assert xs == sorted(xs) and xs[-1] == plot.results.read_result(b)["metrics"][
      "total_uplink_bytes"] / 1e6


def test_out_directory_gets_the_figure_inside_and_the_real_path_printed(two_runs, tmp_path,
                                                                         capsys):
  a, _ = two_runs
  out_dir = tmp_path / "figures"
  out_dir.mkdir()
  assert plot.main([str(a), f"--out={out_dir}"]) == 0
  assert (out_dir / "accuracy.png").stat().st_size > 1000
  assert not (tmp_path / "figures.png").exists()  # the old bug: DIR.png beside DIR
  assert capsys.readouterr().out.strip() == f"wrote {out_dir / 'accuracy.png'}"
  # A trailing slash makes a new directory; a name without a suffix is a PNG file.
  assert plot.main([str(a), f"--out={tmp_path / 'new'}/"]) == 0
  assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'new' / 'accuracy.png'}"
  assert plot.main([str(a), f"--out={tmp_path / 'named'}"]) == 0
  assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'named.png'}"
  assert (tmp_path / "named.png").stat().st_size > 1000


def test_readme_block_is_regenerated_in_place(two_runs, tmp_path):
  a, _ = two_runs
  readme = tmp_path / "README.md"
  readme.write_text("# title\n\nintro\n")
  assert plot.main([str(a), "--readme", f"--readme_path={readme}"]) == 0
  first = readme.read_text()
  assert plot.README_START in first and "| final test accuracy |" in first
  assert "digits / iid, 20 clients, 5 per round, logistic" in first  # from the grouped config
  assert (tmp_path / "docs" / "main_job_accuracy.png").exists()
  assert plot.main([str(a), "--readme", f"--readme_path={readme}"]) == 0
  assert readme.read_text() == first  # replaced, not appended twice


def test_bad_files_exit_with_a_message(tmp_path, capsys):
  (tmp_path / "result.json").write_text("{ truncated")
  assert plot.main([str(tmp_path)]) == 2
  assert "corrupt or was truncated" in capsys.readouterr().err
  assert plot.main([str(tmp_path / "missing")]) == 2
  assert "cannot read" in capsys.readouterr().err


def _extent(artist, fig):
  return artist.get_window_extent(fig.canvas.get_renderer())


@pytest.mark.parametrize("num_series", [2, 5, 12])
def test_legend_never_covers_the_x_label(num_series):
  series = [(SPECS[i % len(SPECS)] + f" #{i}", [0.1 * (i + 1), 1.0, 10.0], [0.1, 0.2, 0.3])
            for i in range(num_series)]
  fig = plotting.line_figure(series, xlabel="cumulative uplink MB", ylabel="test accuracy",
                             title="accuracy vs uplink", logx=True)
  fig.canvas.draw()
  legend = (fig.legends or [fig.axes[0].get_legend()])[0]
  box = _extent(legend, fig)
  ax = fig.axes[0]
  assert not box.overlaps(_extent(ax.xaxis.label, fig))
  for tick in ax.get_xticklabels():
    if tick.get_text():
      assert not box.overlaps(_extent(tick, fig)), tick.get_text()
  # The legend lies inside the figure (not cut off when saved).
  assert fig.bbox.containsx(box.x0) and fig.bbox.containsx(box.x1) and box.y0 >= 0
  plt.close(fig)


def test_log_x_leaves_out_points_at_zero_and_says_so(tmp_path):
  fig = plotting.line_figure([("sync", [0.0, 1.0, 10.0], [0.1, 0.5, 0.7]),
                              ("dga", [0.0, 2.0, 20.0], [0.1, 0.6, 0.8])],
                             xlabel="simulated time (s)", ylabel="test accuracy", logx=True)
  ax = fig.axes[0]
  assert [list(line.get_xdata()) for line in ax.get_lines()] == [[1.0, 10.0], [2.0, 20.0]]
  assert [list(line.get_ydata()) for line in ax.get_lines()] == [[0.5, 0.7], [0.6, 0.8]]
  assert ax.get_xlim()[0] > 0.1  # no fake flat segment from a clipped x = 0
  assert "2 points at x <= 0 not shown" in ax.get_xlabel()
  plt.close(fig)
  # Linear x keeps them, and says nothing.
  fig = plotting.line_figure([("sync", [0.0, 1.0], [0.1, 0.5])], xlabel="t", ylabel="acc")
  assert list(fig.axes[0].get_lines()[0].get_xdata()) == [0.0, 1.0]
  assert fig.axes[0].get_xlabel() == "t"
  plt.close(fig)
  # The runners' time curves: minutes, the t = 0 evaluation left out on a log axis.
  path = tmp_path / "t.png"
  plotting.accuracy_vs_time(path, {"title": "t", "series": [["a", [0.0, 60.0, 600.0],
                                                             [0.1, 0.2, 0.3]]]}, logx=True)
  assert path.stat().st_size > 1000
