"""Parent–child spawning (Fort et al. 2020): how far apart children of one parent end up.

For every pair of children at every evaluation point: the test-error barrier on the straight
line between their parameters, their function-space distance (normalized disagreement) and
the normalized Hamming distance between their ReLU on/off patterns on test inputs.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from ..metrics import error_barrier, function_distance
from ..models import relu_inputs
from ..names import parse_model_name
from ..run.analysis import Point, RunContext

COLUMNS = ["epoch", "step", "child_a", "child_b", "test_err_a", "test_err_b", "barrier",
           "function_distance", "relu_distance"]


class ChildrenMetrics:
    """children.csv rows at one evaluation point, for every pair of children."""

    file = "children.csv"
    columns = COLUMNS

    def __init__(self, context: RunContext, alphas: int = 11, pattern_examples: int = 500):
        spec, evaluator = context.spec, context.evaluator
        self.names = [n for n in evaluator.engine.names if parse_model_name(n).child is not None]
        self.evaluator = evaluator
        self.alphas = np.linspace(0.0, 1.0, alphas)
        self.num_classes = spec.num_classes
        apply = evaluator.engine.apply
        self.labels = np.asarray(evaluator.test_y)
        # The test set is padded to whole batches; padded rows are not counted.
        self._y = jnp.pad(evaluator.test_y, (0, evaluator.test_x.shape[0] - evaluator.n))
        self._valid = jnp.arange(evaluator.test_x.shape[0]) < evaluator.n
        self.pattern_x = evaluator.test_x[: min(pattern_examples, evaluator.n)]

        @jax.jit
        def errors_on_line(pa, pb, x, y, valid):
            def err(alpha):
                p = jax.tree.map(lambda a, b: alpha * a + (1 - alpha) * b, pa, pb)
                wrong = (jnp.argmax(apply(p, x), -1) != y) & valid
                return jnp.sum(wrong)
            return jax.lax.map(err, jnp.asarray(self.alphas, x.dtype))

        @jax.jit
        def pattern_mismatch(pa, pb, x):
            acts_a, acts_b = relu_inputs(apply, pa, x), relu_inputs(apply, pb, x)
            if not acts_a:  # no ReLU in the network: no on/off pattern to compare
                return jnp.zeros((), jnp.int32), 0
            diff = sum(jnp.sum((a > 0) != (b > 0)) for a, b in zip(acts_a, acts_b))
            return diff, sum(a.size for a in acts_a)

        self._errors_on_line = errors_on_line
        self._pattern_mismatch = pattern_mismatch

    def line_errors(self, pa, pb) -> np.ndarray:
        """Test error at each α of the grid, for α·pa + (1−α)·pb."""
        ev, wrong = self.evaluator, 0
        for i in range(0, ev.test_x.shape[0], ev.batch):
            s = slice(i, i + ev.batch)
            wrong = wrong + np.asarray(self._errors_on_line(pa, pb, ev.test_x[s], self._y[s],
                                                            self._valid[s]))
        return wrong / ev.n

    def relu_distance(self, pa, pb) -> float:
        """Fraction of (example, unit) pairs whose activation is on in one child and off in the other."""
        diff, total = 0, 0
        for i in range(0, self.pattern_x.shape[0], self.evaluator.batch):
            d, t = self._pattern_mismatch(pa, pb, self.pattern_x[i:i + self.evaluator.batch])
            diff, total = diff + int(d), total + int(t)
        return diff / total if total else float("nan")  # NaN: the network has no ReLU

    def __call__(self, state, point: Point) -> list[dict]:
        """One row per pair of children."""
        step, epoch, logits = point.step, point.epoch, point.logits
        rows = []
        for a, b in itertools.combinations(self.names, 2):
            pa, pb = state.params[a], state.params[b]
            errors = self.line_errors(pa, pb)  # errors[0]: α = 0, child b; errors[-1]: child a
            rows.append({
                "epoch": round(epoch, 6), "step": step, "child_a": a, "child_b": b,
                "test_err_a": float(errors[-1]), "test_err_b": float(errors[0]),
                "barrier": error_barrier(errors),
                "function_distance": function_distance(logits[a], logits[b], self.labels,
                                                       self.num_classes),
                "relu_distance": self.relu_distance(pa, pb),
            })
        return rows
