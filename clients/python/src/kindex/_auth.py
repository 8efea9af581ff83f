"""The API key a client sends (docs/security.md): ``authorization: Bearer <key>``
as gRPC metadata or as the HTTP ``Authorization`` header, on every call.

Which key: the ``api_key=`` argument when it is given; otherwise the
environment variable ``KINDEX_API_KEY`` (read once, when the client is made);
otherwise none. Surrounding whitespace is dropped, and an empty value means no
key, so ``api_key=""`` sends none even when ``KINDEX_API_KEY`` is set. The key
is never put in a repr, a log line or an exception message.
"""

from __future__ import annotations

import os
from typing import Optional

ENV = "KINDEX_API_KEY"
AUTHORIZATION = "authorization"


class ApiKey:
    """A key, kept out of reprs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        # What the node accepts in a key file: printable ASCII, no spaces (it
        # also wants 16 characters or more, and refuses shorter keys itself).
        if not value or not all("!" <= ch <= "~" for ch in value):
            # Not naming the value: it may be a key with a stray character.
            raise ValueError(
                f"api_key / {ENV} holds characters a header cannot carry "
                "(a key is printable ASCII without spaces)"
            )
        self._value = value

    @property
    def authorization(self) -> str:
        """The ``authorization`` value: ``Bearer <key>``."""
        return f"Bearer {self._value}"

    def __repr__(self) -> str:
        return "ApiKey(<redacted>)"

    __str__ = __repr__


def resolve(api_key: Optional[str]) -> Optional[ApiKey]:
    """The key to send: ``api_key`` when given, else ``$KINDEX_API_KEY``, else none."""
    value = os.environ.get(ENV) if api_key is None else api_key
    if value is None or not value.strip():
        return None
    return ApiKey(value.strip())
