"""``mtoframe.aggregate(..., task_ids=, all_tasks=)``: a bare gradient matrix run as a batch with
some tasks missing, as the trainer would present it to a method."""

from __future__ import annotations

import pytest
import torch

import mtoframe
from mtoframe import Method, Role, hookimpl


class Probe(Method):
    """Records what the context told it and sums the rows."""

    name = "probe"
    summary = "records its context"
    paper = "test fixture"
    roles = Role.AGGREGATOR

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen = []

    @hookimpl
    def on_shared_grads(self, ctx):
        self.seen.append((ctx.tasks, ctx.task_ids.tolist(), ctx.all_tasks))
        ctx.set_update(ctx.grads.sum(0))


G = torch.arange(6.0, dtype=torch.float64).reshape(2, 3)


def test_rows_belong_to_the_named_tasks():
    m = Probe()
    d = mtoframe.aggregate(m, G, task_ids=[0, 2], all_tasks=["a", "b", "c"])
    assert m.seen == [(("a", "c"), [0, 2], ("a", "b", "c"))]
    assert torch.equal(d, G.sum(0))
    mtoframe.aggregate(m, G, task_ids=torch.tensor([3, 1]), all_tasks=4)
    assert m.seen[-1] == (("task3", "task1"), [3, 1], ("task0", "task1", "task2", "task3"))


def test_without_them_every_row_is_present():
    m = Probe()
    mtoframe.aggregate(m, G)
    mtoframe.aggregate(m, G, all_tasks=["x", "y"])
    assert m.seen == [(("task0", "task1"), [0, 1], ("task0", "task1")), (("x", "y"), [0, 1], ("x", "y"))]


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"task_ids": [0, 1]}, "task_ids needs all_tasks="),
    ({"all_tasks": 3}, "grads has 2 rows but all_tasks has 3 tasks: pass task_ids="),
    ({"task_ids": [0], "all_tasks": 3}, r"task_ids must be 2 distinct positions in all_tasks \(0 to 2\)"),
    ({"task_ids": [1, 1], "all_tasks": 3}, "distinct"),
    ({"task_ids": [0, 3], "all_tasks": 3}, r"\(0 to 2\).*got \[0, 3\]"),
    ({"task_ids": [0, True], "all_tasks": 3}, "distinct positions"),
    ({"task_ids": [0, 1], "all_tasks": "ab"}, "all_tasks must be a number of tasks or a sequence of task names"),
    ({"task_ids": [0, 1], "all_tasks": ["a", "a"]}, "each once"),
])
def test_bad_task_ids_or_all_tasks_say_what_is_allowed(kwargs, says):
    with pytest.raises(mtoframe.MtoError, match=says):
        mtoframe.aggregate(Probe(), G, **kwargs)
