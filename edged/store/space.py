"""A full disk, said plainly: which write ran out of space, where, and how much is free."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from edged.errors import EdgedError, ErrorCode

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class OutOfSpaceError(EdgedError):
    code = ErrorCode.RESOURCE_EXHAUSTED


def is_out_of_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def out_of_space(what: str, where: Path) -> OutOfSpaceError:
    try:
        free = f"{shutil.disk_usage(where).free} bytes free"
    except OSError:
        free = "free space unknown"
    return OutOfSpaceError(
        f"{what}: no space left on the device holding {where} ({free}); its temporary files "
        "were removed and nothing was changed: free some space and retry"
    )
