"""The one error type a stage reports as a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """Bad input or state the user must fix; the message names the file or key."""
