r"""The CI throughput regression check (run by ``scripts/check_throughput.py``).

::

  .venv/bin/python scripts/check_throughput.py                    # the check (.ci/run runs it)
  .venv/bin/python scripts/check_throughput.py --update_baseline  # after an intended perf change
  .venv/bin/python scripts/check_throughput.py --inject_slowdown=fwht:3   # watch it fail

One job per module:

* `quiet`: makes the process time steadily; runs before jax is imported.
* `figures`: what is measured (`FIGURES`, `Config`, `execution`) and how a
  figure is set up from the subjects of `benchmarks._throughput_setup`, the
  very round, loop and kernels the benchmarks time.
* `slowdown`: a genuine injected slowdown (`repeated`), to test the check.
* `verdict`: the pass/fail rule, the rows and the table.
* `baseline`: the committed baseline file, read and rewritten.
* `cli`: the flags, the check, the update, re-measuring in fresh processes.

Nothing here may import jax at package import: `quiet` must run first.

The test suite says whether the code is right; this says whether it is still
fast. It measures the figures in `figures.FIGURES`, prints a table of figure,
measured value, baseline, allowed bound and PASS/FAIL, and exits 1 with a line
``REGRESSION: fwht_ratio_to_copy = 54.1 > allowed 14 (baseline 9.32,
tolerance +50%, lower_is_better)`` for each figure that regressed past its
tolerance (2 on a usage error or an unusable baseline). It takes about 45 s on
a 2-core CPU, compiles included.

Why ratios, not times
  CI machines are noisy (this 2-core box read a dense matmul at 75-153
  GFLOP/s across runs, see WORKSPACE.md) and differ from each other, so an
  absolute time says little. Every figure is instead a ratio of two things
  timed in the same process moments apart: the vmapped round against the
  per-client Python loop `fedjax_comp.algorithms.reference.cohort_sums`
  (as in `benchmarks.throughput`), a kernel against a copy ``-x`` of an array of
  the same size (as in `benchmarks.kernels`). Both sides are warmed up
  (compiled) first; then samples of the two alternate, each sample timing
  back-to-back calls (each waited for with `jax.block_until_ready`) that
  span about ``span_ms``, so a 2 ms copy and a 20 ms transform both see
  many scheduler slices. A figure is the median over ``repeats`` pairs of
  the quotient of two samples taken one right after the other: whatever
  state the machine is in at that moment slows both alike and cancels.

Why one device, one thread, no async dispatch, a greedy allocator
  What is left to control is how the two sides share the machine.
  `benchmarks._cpu` splits a CPU host into one XLA device per core, the
  fastest set-up, but then the round runs on both cores while the loop runs
  on one, and the ratio moves with whatever else holds the second core: the
  check uses one device (``FEDJAX_COMP_CPU_DEVICES`` set in the environment
  still wins). It starts XLA's CPU client with one worker thread: a
  multi-threaded op waits for its slowest thread, and on a busy machine
  that thread loses whole scheduler slices (quantize+pack read 2-6x a copy
  across runs that way). It turns off async dispatch
  (``jax_cpu_enable_async_dispatch``), so the Python loop does not hand each
  client's update to a second thread that must be woken up. It keeps glibc's
  allocator from giving freed memory back to the OS, or a fresh 16 MB output
  buffer may be page-faulted in on every call (a copy read 2.5 ms in one
  process and 7 ms in the next), and each kernel figure cycles over a few
  inputs and keeps as many outputs alive, so that no single placement in
  memory decides it. With all that, over runs on this 2-core machine while
  other jobs shared it, single measurements stayed within about -15%/+40%
  of the baseline (the numbers are in ``benchmarks/baselines/README.md``).
  The figures are not the fastest set-up's numbers (the
  benchmarks report those); they only have to move when the code gets
  slower. A baseline records the execution set-up it was measured with, and
  the check refuses to compare against another one.

Direction and tolerance
  Each figure is ``higher_is_better`` (a speedup) or ``lower_is_better`` (a
  time relative to a copy), with a relative tolerance t in the baseline: a
  higher-is-better figure fails when ``measured < baseline * (1 - t)``, a
  lower-is-better one when ``measured > baseline * (1 + t)``; the bound
  itself passes. Tolerances are wide enough for run-to-run noise and tight
  enough that a 2x slower kernel or round fails (t < 1 for a time ratio,
  t < 0.5 for a speedup; the tests check both): 0.5 for a kernel, 0.35 for
  a speedup. A figure that fails is measured again, up to ``--retries``
  times, each time in a fresh process after all the others, and its best
  value is kept: a burst of load, or a process that drew a bad memory
  layout, does not fail CI; a real slowdown fails every time. (A passing
  check takes no longer for it; a failing one about 45 s more per retry.)

The baseline file
  ``benchmarks/baselines/throughput_cpu.json`` holds the config the figures
  were measured with (sizes, repeats), each figure's value, direction and
  tolerance, and metadata (date, machine, jax version, command, execution
  set-up). The check measures with the baseline's config, so a comparison is
  always like with like. ``--update_baseline`` measures each figure
  ``--update_runs`` times in each of ``--update_processes`` fresh processes
  (see `cli.measure_in_fresh_processes`), writes the medians and keeps the
  tolerances; how and when to refresh is in ``benchmarks/baselines/README.md``.

Injecting a slowdown
  ``--inject_slowdown=fwht:6`` (comma-separated ``KERNEL:N``, kernels in
  `figures.SLOWABLE`) makes a kernel do its work N times in sequence inside one
  jitted call (a `lax.fori_loop` whose every pass needs all of the previous
  pass's output, so XLA can neither merge, drop nor trim passes), or runs a
  vmapped round N times back to back, each on the previous round's state.
  ``tests/test_check_throughput.py`` uses it to show that the check fails on
  a genuinely slower kernel.
"""
