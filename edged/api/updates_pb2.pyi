from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PushHeader(_message.Message):
    __slots__ = ("manifest", "signature", "roots")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ROOTS_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    signature: bytes
    roots: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., roots: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PushChunk(_message.Message):
    __slots__ = ("variant", "offset", "data")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    variant: str
    offset: int
    data: bytes
    def __init__(self, variant: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PushHeader
    chunk: PushChunk
    def __init__(self, header: _Optional[_Union[PushHeader, _Mapping]] = ..., chunk: _Optional[_Union[PushChunk, _Mapping]] = ...) -> None: ...

class FileProgress(_message.Message):
    __slots__ = ("variant", "method", "held", "size")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    variant: str
    method: str
    held: int
    size: int
    def __init__(self, variant: _Optional[str] = ..., method: _Optional[str] = ..., held: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("update_id", "model", "version", "state", "files")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    model: str
    version: str
    state: str
    files: _containers.RepeatedCompositeFieldContainer[FileProgress]
    def __init__(self, update_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., files: _Optional[_Iterable[_Union[FileProgress, _Mapping]]] = ...) -> None: ...

class UpdateStatusRequest(_message.Message):
    __slots__ = ("update_id",)
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    def __init__(self, update_id: _Optional[str] = ...) -> None: ...

class UpdateStatusResponse(_message.Message):
    __slots__ = ("update_id", "state", "model", "version", "files")
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    update_id: str
    state: str
    model: str
    version: str
    files: _containers.RepeatedCompositeFieldContainer[FileProgress]
    def __init__(self, update_id: _Optional[str] = ..., state: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., files: _Optional[_Iterable[_Union[FileProgress, _Mapping]]] = ...) -> None: ...
