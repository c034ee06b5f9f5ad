"""The installation aggregate: this installation's identity, one row."""

from __future__ import annotations

import secrets

from sqlalchemy.exc import IntegrityError

from ascob_api.models import Installation
from ascob_api.repository.base import Store


class Installations(Store):
    def installation_id(self) -> str:
        """This installation's identity, created once (the first process to ask wins)."""
        with self.reading() as s:
            row = s.get(Installation, 1)
        if row is not None:
            return row.installation_id
        try:
            with self.session() as s:
                s.add(Installation(id=1, installation_id=secrets.token_hex(6)))
                s.commit()
        except IntegrityError:
            pass  # another process created it meanwhile
        with self.reading() as s:
            row = s.get(Installation, 1)
        assert row is not None
        return row.installation_id
