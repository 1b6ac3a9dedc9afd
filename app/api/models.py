"""Response bodies, as documented in the OpenAPI schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class UploadResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "success",
                    "message": "File uploaded successfully",
                    "filename": "holiday.jpg",
                    "service": "mega",
                    "link": "https://mega.nz/file/AbCdEfGh#k3yk3yk3yk3yk3yk3yk3yk3yk3yk3yk3yk3yk3yk3y",
                    "size": 48213,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "handle": "XyZ12345",
                }
            ]
        }
    )

    # The first five keys, in this order and with these literal values, are the contract
    # existing clients parse; the rest were added beside them.
    status: Literal["success"] = "success"
    message: Literal["File uploaded successfully"] = "File uploaded successfully"
    filename: str = Field(description="The stored name: the client's name, made safe.")
    service: str = Field(description="The storage backend that holds the file.")
    link: str = Field(description="Where the file can be downloaded.")
    size: int = Field(description="Bytes received and stored.")
    sha256: str = Field(description="SHA-256 of the bytes received, hex.")
    handle: str = Field(
        description=(
            "The stored file's id in the backend, kept for clients that look the file up "
            "there. With MEGA it is the file's node handle in the service's account, which "
            "differs from the public handle in the `link` (MEGA gives a published link its "
            "own handle); with local storage it is the random folder in the `link`."
        )
    )


class ErrorBody(BaseModel):
    status: Literal["error"] = "error"
    message: str
    code: str = Field(description="A stable machine-readable error code.")


class Ping(BaseModel):
    message: Literal["Server running"] = "Server running"


class ServiceStatus(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    services: list[str] = Field(description="Values accepted by the `service` parameter.")
    default_service: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyState(BaseModel):
    status: Literal["ready", "not ready"]
    service: str
    reason: str | None = None
    shared_state: str | None = Field(
        default=None,
        description="Where limits and ticket uses are kept: memory, redis, or why Redis "
        "is out of reach.",
    )
