"""Everything that talks to Label Studio: the local server, the project, push and sync."""

from .errors import LabelStudioError, LabelStudioInstallError, LabelStudioUnavailable, TokenMissing

__all__ = ["LabelStudioError", "LabelStudioInstallError", "LabelStudioUnavailable", "TokenMissing"]
