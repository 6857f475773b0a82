"""Value types config fields share: names, positive numbers."""

from __future__ import annotations

from typing import Annotated

import msgspec

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]


PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
