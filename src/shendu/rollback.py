"""The rollback of a training step whose loss is not finite (inf or NaN): such a step is not taken.

The weights and the optimizer's state change only after the loss is known, and are simply left
alone; but the forward pass has already moved BatchNorm's running statistics (the model's
buffers), so the Trainer copies them before each step and puts them back. It then stops with
`diverged`'s error, or, with skip_nonfinite=True, counts the step as skipped and goes on.
"""
from .errors import ShenduError


class Rollback:
    """The model's buffers as they were before a step, K being the model's device."""

    def __init__(self, model, K):
        self.model = model
        self.buffers = {name: K.copy(b) for name, b in model.named_buffers()}

    def undo(self):
        """Put the buffers back as they were."""
        self.model.load_state_dict(self.buffers, strict=False)


def diverged(loss, step, epoch, run_dir):
    """The error that stops training at a non-finite loss at `step` (from 1) of `epoch`."""
    kept = (f"; the last checkpoint in {run_dir} is unchanged (fit(..., resume=...) continues "
            "from it)" if run_dir is not None else "")
    return ShenduError(f"the loss became {loss} at step {step} of epoch {epoch}: training "
                       f"diverged, and that step was not taken{kept}. Lower the learning rate, or "
                       "pass skip_nonfinite=True to skip such steps")
