from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LabelRequest(_message.Message):
    __slots__ = ("model", "request_id", "labels")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    request_id: str
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[str] = ..., request_id: _Optional[str] = ..., labels: _Optional[_Iterable[int]] = ...) -> None: ...

class LabelResponse(_message.Message):
    __slots__ = ("version", "variant", "stratum", "correct")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    STRATUM_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    version: str
    variant: str
    stratum: int
    correct: bool
    def __init__(self, version: _Optional[str] = ..., variant: _Optional[str] = ..., stratum: _Optional[int] = ..., correct: bool = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ScoreRow(_message.Message):
    __slots__ = ("version", "variant", "stratum", "labels", "accuracy", "ece", "measured_quality")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    STRATUM_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ECE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    version: str
    variant: str
    stratum: int
    labels: int
    accuracy: float
    ece: float
    measured_quality: float
    def __init__(self, version: _Optional[str] = ..., variant: _Optional[str] = ..., stratum: _Optional[int] = ..., labels: _Optional[int] = ..., accuracy: _Optional[float] = ..., ece: _Optional[float] = ..., measured_quality: _Optional[float] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("rows", "strata_edges", "cascade")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    STRATA_EDGES_FIELD_NUMBER: _ClassVar[int]
    CASCADE_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[ScoreRow]
    strata_edges: _containers.RepeatedScalarFieldContainer[float]
    cascade: str
    def __init__(self, rows: _Optional[_Iterable[_Union[ScoreRow, _Mapping]]] = ..., strata_edges: _Optional[_Iterable[float]] = ..., cascade: _Optional[str] = ...) -> None: ...
