#!/usr/bin/env python
r"""Where a FedAvg round's time goes: device time per XLA op, with its shape and source.

::

  .venv/bin/python scripts/profile_round.py --model=mlp --clients=1000
  .venv/bin/python scripts/profile_round.py --model=cnn --clients=40 --top=40

It builds the round `benchmarks.throughput` times (`benchmarks._throughput_setup`:
synthetic clients on the device store, the model's default chunk unless
``--chunk``), compiles it, runs it ``--rounds`` times under `jax.profiler`,
and prints the ops that took the most device time per round, summed over
the devices, each with its output shape and the JAX source it came from
(``.../Dense_1/dot_general``, ``.../PatchConv_1/stack``), read from the
compiled executable's optimized HLO (a fusion that lost its metadata shows
the source of an operand, marked ``[operand]``; ``all-reduce`` includes a
device's wait for the other). The numbers are
inflated for ops run many times with little work each (a ``while`` of the
PRNG, a copy): the profiler's own cost per op lands on them. Compare two
versions of the code with paired timings (`benchmarks._timing.Pair`), not
with two profiles.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _cpu  # noqa: E402,F401  (first: XLA device flags)

import jax  # noqa: E402

from benchmarks import _throughput_setup as subjects  # noqa: E402

# Trace events that are the runtime's bookkeeping, not an op of the program.
_RUNTIME = ("ThunkExecutor", "$", "Rendezvous", "InvokeRendezvous", "Wait", "PjitFunction",
            "CommonPjRt", "end:")


def op_table(trace_path: str, hlo_text: str, rounds: int) -> list[tuple[float, str, str, str]]:
  """(ms per round, op, output shape, JAX source) for every op, slowest first."""
  with gzip.open(trace_path) as f:
    events = json.load(f)["traceEvents"]
  total = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_RUNTIME) and "PjRt" not in e["name"]:
      total[e["name"]] += e["dur"]  # microseconds
  lines, computation_source, computation = {}, {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"(?:ENTRY )?%(\S+) .*\{$", line)
    if header:
      computation = header.group(1)
    m = re.match(r"\s*(?:ROOT )?%(\S+) = ", line)
    if m:
      lines.setdefault(m.group(1), line)
      source = re.search(r'op_name="([^"]*)"', line)
      if source and computation:
        computation_source.setdefault(computation, source.group(1))
  rows = []
  for name, us in total.items():
    line = lines.get(name, "")
    shape = line.split("=", 1)[1].strip().split(" ")[0] if line else ""
    source = re.search(r'op_name="([^"]*)"', line)
    called = re.search(r"calls=%([\w.\-]+)", line)
    if source:
      source = source.group(1)
    else:  # a fusion without its own metadata: the first source inside it, or an operand's
      source = computation_source.get(called.group(1), "") if called else ""
      if not source and line:
        operands = re.findall(r"%([\w.\-]+)", line.split("=", 1)[1].split("calls=")[0])
        sources = [re.search(r'op_name="([^"]*)"', lines.get(o, "")) for o in operands]
        source = next((f"{m.group(1)} [operand]" for m in sources if m), "")
    rows.append((us / 1e3 / rounds, name, shape, source))
  return sorted(rows, reverse=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="mlp", choices=sorted(subjects.INPUT_SHAPES))
  parser.add_argument("--clients", type=int, default=1000, help="clients per round")
  parser.add_argument("--chunk", type=int, default=0, help="client chunk (0: the default)")
  parser.add_argument("--examples", type=int, default=20, help="examples per client")
  parser.add_argument("--batch_size", type=int, default=10)
  parser.add_argument("--local_steps", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=3, help="profiled rounds")
  parser.add_argument("--top", type=int, default=25, help="ops to print")
  args = parser.parse_args(argv)
  for name in ("clients", "examples", "batch_size", "local_steps", "rounds", "top"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  if args.chunk < 0:
    parser.error(f"--chunk must be >= 0 (0: the model's default), got {args.chunk}")
  need = subjects.population_bytes(args.clients, args.examples, subjects.INPUT_SHAPES[args.model])
  if need > subjects.device_budget():
    parser.error(f"--clients={args.clients} with --examples={args.examples} needs "
                 f"{need / 2**30:.2f} GiB of synthetic clients per device, over the budget of "
                 f"{subjects.device_budget() / 2**30:.2f} GiB (half a device's memory)")

  su = subjects.setup(args.model, args.clients, examples=args.examples,
                      batch_size=args.batch_size, local_steps=args.local_steps,
                      chunk=args.chunk or None)
  _, state, rounds = su.fed_avg(args.clients)
  run_round, compiled, _ = subjects.compile_round(rounds, state)
  jax.block_until_ready(run_round())
  trace_dir = tempfile.mkdtemp(prefix="fedjax_comp_trace_")  # scratch: removed on exit
  atexit.register(shutil.rmtree, trace_dir, ignore_errors=True)
  with jax.profiler.trace(trace_dir):
    for _ in range(args.rounds):
      jax.block_until_ready(run_round())
  traces = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
  if not traces:
    print(f"no trace written under {trace_dir}", file=sys.stderr)
    return 1
  rows = op_table(max(traces, key=os.path.getmtime), compiled.as_text(), args.rounds)
  total = sum(r[0] for r in rows)
  print(f"{args.model}, {args.clients} clients/round, chunk {su.chunk}, "
        f"{jax.device_count()} device(s): {total:.1f} ms of op time per round "
        "(summed over devices)")
  print(f"{'ms/round':>9} {'share':>6}  {'op':28s} {'shape':28s} source")
  for ms, name, shape, source in rows[:args.top]:
    print(f"{ms:9.2f} {ms / total:6.1%}  {name:28s} {shape[:28]:28s} {source[-70:]}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
