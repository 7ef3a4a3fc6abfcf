"""One exception hierarchy for everything fvlm raises on bad input.

Every message names the offending input and says what to do about it. Catch `FVLMError` to
handle them all; the subclasses also derive from the matching built-in (`ValueError`,
`FileNotFoundError`, ...) so generic handlers keep working.
"""


class FVLMError(Exception):
    """Base class of every error fvlm raises on purpose."""


class ConfigError(FVLMError, ValueError):
    """A configuration is invalid: unknown key, wrong type, or out-of-range value."""


class VideoError(FVLMError):
    """A video or image could not be used."""


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The video/image path does not exist."""


class VideoDecodeError(VideoError, ValueError):
    """The file exists but yields no usable frames (empty, corrupt, not a video)."""


class InputError(FVLMError, ValueError):
    """A generate()/forward() argument has the wrong type, shape or value."""


class PromptTooLongError(InputError):
    """Prompt plus visual tokens do not fit into the LLM's context window."""


class CheckpointError(FVLMError, OSError):
    """A model directory or weights file is missing, incomplete, or does not match the model."""
