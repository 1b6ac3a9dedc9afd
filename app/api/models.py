"""Response bodies, as documented in the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime
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
                    "id": "XyZ12345",
                    "delete_url": "https://files.example.org/delete/XyZ12345/k3yk3y.../s3cr3t...",
                    "expires_at": "2026-12-06T21:40:02Z",
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
    id: str = Field(
        description="The stored file's stable id (MEGA: its node handle); the same for every "
        "upload of the same bytes."
    )
    delete_url: str | None = Field(
        default=None,
        description="`DELETE` it to take this upload back, with no other credential. Shown "
        "once: keep it secret. A path (to join to the service's address) when the service "
        "has no PUBLIC_BASE_URL; null when the storage keeps no records.",
    )
    expires_at: datetime | None = Field(
        default=None,
        description="When this upload expires and is deleted (UTC); null: kept until deleted.",
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


class StorageSpace(BaseModel):
    used_bytes: int
    total_bytes: int
    free_bytes: int
    used_percent: float = Field(description="used_bytes / total_bytes, in percent.")


class UploadRow(BaseModel):
    """One upload, as `GET /uploads` lists it."""

    id: str = Field(description="The stored file's id (shared by uploads of the same bytes).")
    name: str
    size: int
    sha256: str | None = Field(description="Null for files stored before records were kept.")
    link: str | None = Field(description="Null while the file's link is revoked.")
    created_at: datetime = Field(description="When this upload was made.")
    expires_at: datetime | None = Field(description="When this upload expires; null: kept.")
    token: str | None = Field(description="The name of the token that sent it.")
    service: str


class UploadPage(BaseModel):
    uploads: list[UploadRow] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class Deleted(BaseModel):
    status: Literal["deleted"] = "deleted"
    id: str
    removed: Literal["file", "uploads"] = Field(
        description="`file`: the file and its link are gone; `uploads`: only the caller's "
        "uploads of it were removed, other uploaders' keep the file and its link."
    )


class LinkState(BaseModel):
    id: str
    link: str | None = Field(description="The file's public link; null once revoked.")


class ReadyState(BaseModel):
    status: Literal["ready", "not ready"]
    service: str
    reason: str | None = None
    shared_state: str | None = Field(
        default=None,
        description="Where limits and ticket uses are kept: memory, redis, or why Redis "
        "is out of reach.",
    )
    storage: StorageSpace | None = Field(
        default=None, description="How full the storage is, when it says (MEGA: the account)."
    )
