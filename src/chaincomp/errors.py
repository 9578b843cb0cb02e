"""Errors a user can fix. The command line turns them into one line on stderr and exit status 2."""


class UserError(Exception):
    """A mistake in the user's input (recipe, path, file): message names the field or file and the fix."""


class DivergenceError(RuntimeError):
    """Training produced NaN/Inf; raised after the last good weights were restored."""

    def __init__(self, stage: str, step: int, value: float):
        super().__init__(f"stage '{stage}' diverged at step {step} (loss={value}); last good weights restored")
        self.stage, self.step, self.value = stage, step, value
