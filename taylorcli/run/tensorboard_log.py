"""TensorBoard event files of a run (`log: {tensorboard: true}`), in RUN/tensorboard/.

Written with tensorboardX (no TensorFlow): each model's minibatch loss every
`log.every_steps` steps (`batch_loss/MODEL`), every evaluation metric (`test_acc/MODEL`,
`train_loss/MODEL` (the mean since the previous evaluation), `cos_func/MODEL`, ...), the
learning rate (`lr`), and the resolved recipe as text (`recipe`). Losses are
written once the device has computed them, so logging never makes the loop wait. A resumed run
continues the same files; events past its checkpoint are hidden (TensorBoard's purge_step).
"""

from __future__ import annotations

import math
from collections import deque

from ..files import OwnedFolder

EVAL_METRICS = ("test_acc", "test_loss", "train_loss", "train_acc", "cos_param", "cos_func",
                "func_dist", "param_dist")


class TensorBoardLog:
    """The run's event files: train losses on a cadence, evaluations, the lr, the recipe."""

    def __init__(self, folder: OwnedFolder, recipe_text: str, schedule, every_steps: int,
                 start_step: int, resumed: bool):
        from tensorboardX import SummaryWriter

        # The folder is made through the run's own folder (no link followed); tensorboardX then
        # adds its own new event files inside it.
        folder.write("tensorboard/README", b"TensorBoard event files: tensorboard --logdir "
                                           b"this folder\n")
        self.writer = SummaryWriter(logdir=str(folder.path / "tensorboard"),
                                    purge_step=start_step if resumed else None,
                                    flush_secs=30)
        self.schedule = schedule
        self.every = every_steps
        self.pending: deque = deque()
        if not resumed:
            self.writer.add_text("recipe", f"```yaml\n{recipe_text}```", start_step)

    def step(self, step: int, stats: dict) -> None:
        """After an optimizer step: keep its losses if it is on the cadence, write the ready ones."""
        if step % self.every == 0:
            self.pending.append((step, stats))
        self._write_ready(wait=False)

    def evaluation(self, step: int, rows: list[dict]) -> None:
        """Every metric of every model at an evaluation point, and the learning rate."""
        for row in rows:
            for metric in EVAL_METRICS:
                value = row.get(metric)
                if value is not None and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{metric}/{row['model']}", float(value), step)
        if step % self.every:  # on the cadence, the loss logging writes it
            self.writer.add_scalar("lr", float(self.schedule(step)), step)

    def close(self) -> None:
        """Write what is still pending and close the files."""
        self._write_ready(wait=True)
        self.writer.close()

    def _write_ready(self, wait: bool) -> None:
        import jax

        while self.pending:
            step, stats = self.pending[0]
            leaves = jax.tree.leaves(stats)
            if not wait and not all(getattr(x, "is_ready", lambda: True)() for x in leaves):
                return
            self.pending.popleft()
            values = jax.device_get(stats)
            for model, (loss, _) in values.items():
                if math.isfinite(float(loss)):
                    self.writer.add_scalar(f"batch_loss/{model}", float(loss), step)
            self.writer.add_scalar("lr", float(self.schedule(step)), step)
