"""TensorBoard output read back with tensorboard's EventAccumulator."""

from __future__ import annotations

from helpers import ScaledSum
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mtoframe.testing import make_batch, make_trainer


def _tags(log_dir):
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


def test_event_file_has_loss_weight_grad_and_timing_tags(tmp_path):
    trainer = make_trainer([ScaledSum()], log_dir=tmp_path, log_every=2, hparams={"seed": 3})
    batches = [make_batch(trainer.model, seed=s) for s in range(4)]
    trainer.fit(batches, epochs=1, val=batches[:1])
    trainer.close()
    acc = _tags(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    for tag in ("loss/a", "weight/b", "grad/norm/c", "grad/cos/a-b", "time/step_ms",
                "time/on_shared_grads/scaledsum_ms", "time/backward_ms", "metric/val/a/mae"):
        assert tag in scalars, (tag, sorted(scalars))
    # logged on steps 0 and 2 only
    assert [e.step for e in acc.Scalars("loss/a")] == [0, 2]
    # hyper-parameters live in this run directory, not in a sub-run
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]
    assert "hparams" in acc.Tags()["tensors"] or acc.summary_metadata


def test_no_logger_without_log_dir():
    trainer = make_trainer([])
    ctx = trainer.step(make_batch(trainer.model))
    assert trainer.logger is None and not ctx.logging and ctx.scalars == {}
