"""The files aggregate: a run's input files (bytes), uploaded while the run is DEFINED."""

from __future__ import annotations

from ascob_api.models import RunFile
from ascob_api.repository.base import RecordNotFound, Store
from ascob_flows.clock import utcnow


class Files(Store):
    def put_file(self, run_id: int, file_id: str, content: bytes) -> None:
        with self.session() as s:
            existing = s.get(RunFile, (run_id, file_id))
            if existing is None:
                s.add(RunFile(run_id=run_id, file_id=file_id, content=content, size=len(content)))
            else:
                existing.content = content
                existing.size = len(content)
                existing.created_at = utcnow()
                s.add(existing)
            s.commit()

    def get_file(self, run_id: int, file_id: str) -> RunFile:
        with self.reading() as s:
            found = s.get(RunFile, (run_id, file_id))
        if found is None:
            raise RecordNotFound(f"file {file_id!r} not found")
        return found
