"""Everything on the host around the jitted round: the loop, the clock, checkpoints, records, plots."""

from fedjax_comp.experiment import checkpoint, clock, plotting, results
from fedjax_comp.experiment.loop import History, run_rounds

__all__ = ["History", "checkpoint", "clock", "plotting", "results", "run_rounds"]
