"""An uploaded query image read under the app's limits, as every image endpoint reads it.

No ``from __future__ import annotations``: FastAPI must see the parameter types as objects.
"""

import torch
from fastapi import HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from adaptor.retrieval.routes.state import ServiceState
from adaptor.retrieval.uploads import BadUploadError, UnsupportedUploadError, decode_upload

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and headers around the uploaded file


async def upload_pixels(file: UploadFile, state: ServiceState) -> torch.Tensor:
    """The upload as the image encoder's input: 413 past ``max_upload_bytes``, 415 for a file
    that is not PNG, JPEG or DICOM, a 422 on ``file`` for an empty or undecodable one."""
    limits = state.limits
    data = await file.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"upload exceeds {limits.max_upload_bytes} bytes")
    if not data:
        raise invalid_field("file", "the uploaded file is empty")
    try:
        grey = await run_in_threadpool(
            decode_upload, data, file.filename or "upload", limits.max_image_side
        )
        return await run_in_threadpool(state.searcher.encoder.pixels, grey)
    except UnsupportedUploadError as err:
        raise HTTPException(415, str(err)) from None
    except BadUploadError as err:
        raise invalid_field("file", str(err)) from None


def invalid_field(field: str, message: str) -> RequestValidationError:
    """A 422 for the form field ``field``, shaped like every other validation error."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": message, "input": None}]
    )
