"""``mtoframe compare CONFIG.toml --methods ew,famo,... --seeds N``: which method, if any, helps
on *this* config's data and model, at what cost.

Protocol (that of the quality benchmark, :mod:`mtoframe.bench.quality`, on the user's config):

* Every stack is trained with seeds ``seed, seed+1, …`` (``seed`` from the config). Seed ``s``
  fixes the initial weights (``torch.manual_seed(s)`` before the data and model factories run)
  and the data order (the loader's own generator, seeded with ``s``, so a method that draws
  random numbers while training does not change the order), for every stack alike: the
  differences to EW are **paired** by seed.
* Checkpoint rule: the model after the last epoch (:data:`mtoframe.bench.quality.CHECKPOINT_RULE`);
  it is evaluated once on the held-out split, which is the data factory's ``test`` split, or the
  ``val`` split when the factory returns only ``(train, val)`` (the record says which).
* Quality: per seed, ``Δp_task`` of the stack **against EW of the same seed** (LibMTL's formula
  with EW in place of the single-task baselines: the mean over tasks of the mean signed relative
  change of each metric, in %), and the plain difference of each metric; mean and 95% Student-t
  interval over seeds (:func:`mtoframe.bench.stats.mean_ci`). A stack is called better or worse
  only when the interval excludes 0 (:func:`mtoframe.bench.stats.difference_verdict`).
* Cost: step time as a paired ratio to EW with a bootstrap interval, and peak memory, from the
  timing harness (:func:`mtoframe.bench.speed.run_speed`) on the config's model and first batch.

Every (stack, seed) run writes ``runs/<stack>/seed<s>/result.json`` (atomically, last) next to
its TensorBoard run; a re-run skips the runs whose result exists, so a killed compare continues
where it stopped.
"""
