"""The one experiment loop: rounds, evaluation, the simulated clock, records and checkpoints.

``state, history = run_rounds(algorithm, state, rounds, num_rounds=300, ...)``
serves the runners, the notebook and the README snippet alike. Each round:

1. ``state, out = rounds.step(state)`` (a bound client store, `data.stores`);
2. bits: every client with data uploads ``algorithm.uplink_bits`` (exact,
   from the payload's arrays) and downloads ``algorithm.downlink_bits`` (the
   model, every round, the first included), or with a downlink codec the
   broadcasts it missed since it last trained, or the float32 model if
   fewer bits (`algorithms.downlink.CatchUp`; the first copy is the seed's,
   0 bits);
3. the clock (optional): the round lasts as long as its slowest client with
   data, from the round's own client ids and step counts;
4. a record (one line of ``metrics.jsonl`` when an output directory is set);
5. a non-finite aggregate or loss stops the run, naming the round;
6. evaluation every `eval_every` rounds and after the last;
7. a checkpoint every `checkpoint_every` rounds and after the last: the
   state, every client's row and this bookkeeping, so a run resumed after
   SIGKILL ends bit-identical to an uninterrupted one;
8. a progress line with the rate and an ETA.

Ctrl-C stops after writing ``result.json`` with ``succeeded=false``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from fedjax_comp.algorithms.base import FederatedAlgorithm
from fedjax_comp.algorithms.downlink import CatchUp
from fedjax_comp.sharding import fetch
from fedjax_comp.experiment import checkpoint, results
from fedjax_comp.experiment.clock import RoundClock, time_to_target

CHECKPOINT = "checkpoint.msgpack"


class Cohort(NamedTuple):
  """One round's clients as the clock sees them."""

  ids: np.ndarray  # client ids (padding included)
  steps: np.ndarray  # local steps per id (0: no data)
  down_bits: int | np.ndarray  # bits each downloaded (a scalar, or one per id)

  def clock(self, round_clock: RoundClock, up_bits: int) -> tuple[float, float]:
    """`RoundClock.add_round` for this round: ``(its seconds, the new total)``."""
    return round_clock.add_round(self.ids, self.steps, up_bits=up_bits, down_bits=self.down_bits)


@dataclasses.dataclass
class History:
  """What a run did, as values (also what a checkpoint carries to resume)."""

  records: list[dict] = dataclasses.field(default_factory=list)  # one per round run here
  evals: list[dict] = dataclasses.field(default_factory=list)  # {"round", "sim_time_s", **metrics}
  rounds_done: int = 0
  error: str | None = None
  compile_s: float = 0.0
  round_time_s: float = 0.0  # wall seconds inside rounds (resumed runs included)
  total_uplink_bits: int = 0
  total_downlink_bits: int = 0
  sim_time_s: float | None = None
  data_wait_s: float = 0.0  # total wait of the rounds for their cohorts (host store)
  # With run_rounds(keep_cohorts=True): each round's client ids, local steps and download
  # bits, e.g. to clock the same run under other networks afterwards (`Cohort.clock`).
  cohorts: list[Cohort] = dataclasses.field(default_factory=list)
  # With a downlink codec: the round whose copy each client that trained holds
  # (`downlink.CatchUp.state`), so a resumed run charges the same downloads.
  downlink_synced: dict | None = None

  @property
  def final_eval(self) -> dict | None:
    return self.evals[-1] if self.evals else None

  def to_target(self, metric: str, target: float, x: str = "round"):
    """The first `x` ("round" or "sim_time_s") at which `metric` reached `target`, or None."""
    return time_to_target([e[x] for e in self.evals], [e.get(metric) for e in self.evals],
                          target)

  def bookkeeping(self) -> dict:
    return {k: getattr(self, k) for k in ("evals", "rounds_done", "round_time_s",
                                           "total_uplink_bits", "total_downlink_bits",
                                           "sim_time_s", "downlink_synced")}


def _resume(path, state, rounds, algorithm, config, history, clock, num_rounds, say):
  meta = checkpoint.read_meta(path)
  template = {"state": fetch(state),
              "rows": rounds.rows_template(int(meta.get("num_rows", 0)))}
  if meta.get("algorithm") != algorithm.name:
    raise checkpoint.CheckpointError(
        f"{path} is a checkpoint of algorithm {meta.get('algorithm')!r}, not "
        f"{algorithm.name!r}; use the same --algorithm or another --output_dir")
  if config is not None and meta.get("config") != config:
    saved = meta.get("config") or {}
    diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
    raise ValueError(f"--resume: {path} was written with another configuration; these differ: "
                     + ", ".join(f"{k} (checkpoint {saved.get(k)!r}, now {config.get(k)!r})"
                                 for k in diff))
  if algorithm.downlink_copy_bits is not None and "downlink_synced" not in meta["bookkeeping"]:
    raise checkpoint.CheckpointError(
        f"{path} predates the downlink catch-up accounting (it has no record of which round's "
        "model each client holds), so its downlink totals would mix two rules; start the run "
        "again in another --output_dir")
  done = int(meta["bookkeeping"]["rounds_done"])
  if num_rounds < done:
    raise ValueError(f"--rounds={num_rounds} is below the checkpoint's round {done}; "
                     f"pass --rounds >= {done} to continue it")
  tree, meta = checkpoint.load(path, template)
  rounds.set_rows(tree["rows"])
  for k, v in meta["bookkeeping"].items():
    setattr(history, k, v)
  if clock is not None:
    clock.total_s = float(history.sim_time_s or 0.0)
  say(f"resuming from round {done} ({path})")
  return tree["state"]


def run_rounds(algorithm: FederatedAlgorithm, state, rounds, *, num_rounds: int,
               evaluate: Callable[[Any], Mapping[str, float]] | None = None,
               eval_every: int = 10, clock: RoundClock | None = None,
               output_dir: str | None = None, run_name: str = "run",
               checkpoint_every: int = 0, resume: bool = False, config: dict | None = None,
               result_metrics: Callable[[History], dict] | None = None,
               extras: Mapping[str, Any] | None = None, keep_cohorts: bool = False,
               say: Callable[[str], None] | None = print) -> tuple[Any, History]:
  """Runs `algorithm` from `state` until round `num_rounds`; returns the state and a `History`.

  Args:
    algorithm: the algorithm (for its bits and name).
    state: its state (a fresh ``algorithm.init(seed)``, on the mesh if any).
    rounds: a bound client store (``store.bind(algorithm, state.params)``).
    num_rounds: the round to stop after (a resumed run continues to it).
    evaluate: ``evaluate(state) -> {metric: value}``, e.g. test accuracy.
    eval_every: evaluate every this many rounds (and after the last).
    clock: the simulated clock, or None.
    output_dir: where ``metrics.jsonl``, ``result.json`` and the checkpoint go
      (None: keep everything in memory).
    run_name: ``result.json``'s name.
    checkpoint_every: checkpoint every this many rounds (0: only the last);
      needs `output_dir`.
    resume: continue from ``<output_dir>/checkpoint.msgpack`` if it exists.
    config: JSON-able run configuration: saved in checkpoints; a resume with
      a different one is refused, naming the keys that differ.
    result_metrics: more metrics for ``result.json`` from the `History`.
    extras: ``result.json``'s extras (config, versions, ...).
    keep_cohorts: keep every round's client ids, step counts and download bits in the
      History (`Cohort`), to replay the clock under other networks.
    say: progress printer (None: silent).
  """
  say = say or (lambda *_: None)
  if num_rounds < 1 or eval_every < 1 or checkpoint_every < 0:
    raise ValueError(f"need num_rounds >= 1, eval_every >= 1 and checkpoint_every >= 0; got "
                     f"{num_rounds}, {eval_every}, {checkpoint_every}")
  history = History(sim_time_s=0.0 if clock is not None else None)
  ckpt = pathlib.Path(output_dir) / CHECKPOINT if output_dir else None
  if resume and ckpt is not None and ckpt.exists():
    state = _resume(ckpt, state, rounds, algorithm, config, history, clock, num_rounds, say)
  elif resume:
    say(f"--resume: no {ckpt} yet; starting from round 0")
  start = history.rounds_done
  recorder = (results.RunRecorder(output_dir, run_name, resume_round=start if resume else None)
              if output_dir else None)
  params = fetch(state.params)
  up_bits, down_bits = algorithm.uplink_bits(params), algorithm.downlink_bits(params)
  catch_up = (None if algorithm.downlink_copy_bits is None else
              CatchUp(down_bits, algorithm.downlink_copy_bits(params), history.downlink_synced))

  def save(r):
    if ckpt is not None:
      history.rounds_done = r
      history.downlink_synced = None if catch_up is None else catch_up.state()
      table = rounds.get_rows()
      checkpoint.save(ckpt, {"state": state, "rows": table},
                      {"algorithm": algorithm.name, "config": config,
                       "num_rows": int(len(table["ids"])), "bookkeeping": history.bookkeeping()})

  def finish(succeeded: bool):
    if recorder is None:
      return
    final = history.final_eval or {}
    metrics = {"rounds": history.rounds_done, "compile_s": history.compile_s,
               **{f"final_test_{k}": v for k, v in final.items()
                  if k not in ("round", "sim_time_s")},
               "rounds_per_sec": history.rounds_done / max(history.round_time_s, 1e-9),
               "client_updates_per_sec": algorithm.clients_per_round * history.rounds_done
                                         / max(history.round_time_s, 1e-9),
               "uplink_bits_per_client_round": up_bits,
               # with a downlink codec: one broadcast; a client downloads those it missed
               "downlink_bits_per_client_round": down_bits,
               "downlink_catch_up": catch_up is not None,
               "total_uplink_bytes": history.total_uplink_bits / 8,
               "total_downlink_bytes": history.total_downlink_bits / 8,
               "sim_time_s": history.sim_time_s,
               "data_wait_s_per_round": history.data_wait_s / max(len(history.records), 1)}
    if result_metrics:
      metrics.update(result_metrics(history))
    if history.error:
      metrics["error"] = history.error
    recorder.finish(succeeded=succeeded, metrics=metrics, extras=dict(extras or {}))

  t = time.perf_counter()
  step = rounds.compile(state)
  history.compile_s = time.perf_counter() - t
  r = start
  try:
    for r in range(start + 1, num_rounds + 1):
      t = time.perf_counter()
      state, out = step(state)
      out = fetch(out)
      history.round_time_s += time.perf_counter() - t
      m = out.metrics
      senders = int(m.num_clients)  # every client with data sends one payload
      if catch_up is None:
        client_down, round_down = down_bits, down_bits * senders
      else:
        client_down = catch_up.round(r, out.client_ids, out.client_steps)
        round_down = int(client_down.sum())
      if keep_cohorts:
        history.cohorts.append(Cohort(np.asarray(out.client_ids), np.asarray(out.client_steps),
                                      client_down))
      history.total_uplink_bits += up_bits * senders
      history.total_downlink_bits += round_down
      record = {"round": r, "train_loss": float(m.train_loss),
                "update_norm": float(m.update_norm), "num_clients": senders,
                "num_steps": int(m.num_steps), "uplink_bits": up_bits * senders,
                "downlink_bits": round_down,
                "round_uplink_bytes": up_bits * senders / 8,
                "round_downlink_bytes": round_down / 8,
                "total_uplink_bytes": history.total_uplink_bits / 8,
                "total_downlink_bytes": history.total_downlink_bits / 8}
      wait = getattr(rounds, "data_wait_s", None)  # a host store's wait for the cohort
      if wait is not None:
        record["data_wait_s"] = wait
        history.data_wait_s += wait
      if clock is not None:
        sim_round_s, history.sim_time_s = clock.add_round(
            out.client_ids, out.client_steps, up_bits=up_bits, down_bits=client_down)
        record.update(sim_round_s=sim_round_s, sim_time_s=history.sim_time_s)
      if not (bool(m.finite) and np.isfinite(m.train_loss)):
        what = ("aggregate (the update was not applied)" if not m.finite
                else "client train loss")
        history.error = (f"non-finite {what} at round {r}; stopping. Try a smaller "
                         f"--client_lr or --server_lr.")
        record["error"] = history.error
        history.records.append(record)
        if recorder:
          recorder.log(record)
        say(f"stopping: {history.error}")
        r -= 1
        break
      if evaluate is not None and (r % eval_every == 0 or r == num_rounds):
        ev = {k: float(v) for k, v in fetch(dict(evaluate(state))).items()}
        record.update({f"test_{k}": v for k, v in ev.items()})
        history.evals.append({"round": r, "sim_time_s": history.sim_time_s, **ev})
      history.records.append(record)
      if recorder:
        recorder.log(record)
      history.rounds_done = r
      if checkpoint_every and r % checkpoint_every == 0 and r < num_rounds:
        save(r)
      rate = algorithm.clients_per_round * (r - start) / max(history.round_time_s, 1e-9)
      eta = history.round_time_s / max(r - start, 1) * (num_rounds - r)
      acc = history.final_eval.get("accuracy") if history.final_eval else None
      say(f"round {r:5d}/{num_rounds}  test_acc {'  -   ' if acc is None else f'{acc:.4f}'}"
          f"  train_loss {record['train_loss']:.4f}  {rate:9.0f} client updates/s  "
          f"eta {eta:5.0f}s")
  except KeyboardInterrupt:
    history.rounds_done = r - 1 if r > history.rounds_done else history.rounds_done
    history.error = f"interrupted (Ctrl-C) after round {history.rounds_done}"
    say(f"stopping: {history.error}")
    finish(succeeded=False)
    raise
  history.rounds_done = r
  if history.error is None and r > start:
    save(r)  # the last round, always
  finish(succeeded=history.error is None)
  return state, history
