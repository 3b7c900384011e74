"""One record's metadata and thumbnail, addressed by id through the metadata store only."""

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from adaptor.retrieval.routes.models import RecordId, RecordOut, error_responses
from adaptor.retrieval.routes.state import State

router = APIRouter()


@router.get("/records/{record_id:path}", responses=error_responses(404))
def record(record_id: RecordId, state: State) -> RecordOut:
    """One indexed record's metadata."""
    meta = state.searcher.record(record_id)
    if meta is None:
        raise HTTPException(404, f"no record with id {record_id!r} in this index")
    url = f"/thumbnails/{record_id}" if meta["has_thumbnail"] else None
    return RecordOut(**meta, thumbnail_url=url)


@router.get(
    "/thumbnails/{record_id:path}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **error_responses(404)},
)
def thumbnail(record_id: RecordId, state: State) -> Response:
    """The record's JPEG thumbnail, made from its indexed image when the index was built."""
    data = state.searcher.thumbnail(record_id)
    if data is None:
        raise HTTPException(404, f"no thumbnail for id {record_id!r} in this index")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private"})
