from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EvictRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class EvictResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("model", "variant")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    model: str
    variant: str
    def __init__(self, model: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class LoadResponse(_message.Message):
    __slots__ = ("version", "variant", "resident_bytes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    version: str
    variant: str
    resident_bytes: int
    def __init__(self, version: _Optional[str] = ..., variant: _Optional[str] = ..., resident_bytes: _Optional[int] = ...) -> None: ...

class Variant(_message.Message):
    __slots__ = ("id", "format", "quantization", "quality", "size", "state", "reason", "resident_bytes", "load_seconds", "serving", "labels", "accuracy", "ece", "measured_quality")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ECE_FIELD_NUMBER: _ClassVar[int]
    MEASURED_QUALITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    format: str
    quantization: str
    quality: float
    size: int
    state: str
    reason: str
    resident_bytes: int
    load_seconds: float
    serving: bool
    labels: int
    accuracy: float
    ece: float
    measured_quality: float
    def __init__(self, id: _Optional[str] = ..., format: _Optional[str] = ..., quantization: _Optional[str] = ..., quality: _Optional[float] = ..., size: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., resident_bytes: _Optional[int] = ..., load_seconds: _Optional[float] = ..., serving: bool = ..., labels: _Optional[int] = ..., accuracy: _Optional[float] = ..., ece: _Optional[float] = ..., measured_quality: _Optional[float] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("bytes", "limited_by", "accounted_bytes", "available_bytes", "psi_some_avg10")
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LIMITED_BY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PSI_SOME_AVG10_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    limited_by: str
    accounted_bytes: int
    available_bytes: int
    psi_some_avg10: float
    def __init__(self, bytes: _Optional[int] = ..., limited_by: _Optional[str] = ..., accounted_bytes: _Optional[int] = ..., available_bytes: _Optional[int] = ..., psi_some_avg10: _Optional[float] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "active", "variants")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    version: str
    active: bool
    variants: _containers.RepeatedCompositeFieldContainer[Variant]
    def __init__(self, version: _Optional[str] = ..., active: bool = ..., variants: _Optional[_Iterable[_Union[Variant, _Mapping]]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "active_version", "state", "versions", "pinned", "predicted_rate", "last_use_seconds_ago", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_RATE_FIELD_NUMBER: _ClassVar[int]
    LAST_USE_SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    active_version: str
    state: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    pinned: bool
    predicted_rate: float
    last_use_seconds_ago: float
    reason: str
    def __init__(self, name: _Optional[str] = ..., active_version: _Optional[str] = ..., state: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., pinned: bool = ..., predicted_rate: _Optional[float] = ..., last_use_seconds_ago: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "budget")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    budget: Budget
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...
