from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    INVALID_EVENT: _ClassVar[RejectReason]
    UNKNOWN_CUSTOMER: _ClassVar[RejectReason]
    NO_ACTIVE_CONTRACT: _ClassVar[RejectReason]
    TIMESTAMP_OUT_OF_RANGE: _ClassVar[RejectReason]
    PERIOD_CLOSED: _ClassVar[RejectReason]
    DUPLICATE_CONFLICT: _ClassVar[RejectReason]
    NO_APPLICABLE_RATE: _ClassVar[RejectReason]

class NoticeReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NOTICE_REASON_UNSPECIFIED: _ClassVar[NoticeReason]
    NOTICE_RESERVATION_UNKNOWN: _ClassVar[NoticeReason]
    NOTICE_RESERVATION_ALREADY_SETTLED: _ClassVar[NoticeReason]
    NOTICE_RESERVATION_RELEASED: _ClassVar[NoticeReason]
    NOTICE_RESERVATION_EXPIRED: _ClassVar[NoticeReason]
REJECT_REASON_UNSPECIFIED: RejectReason
INVALID_EVENT: RejectReason
UNKNOWN_CUSTOMER: RejectReason
NO_ACTIVE_CONTRACT: RejectReason
TIMESTAMP_OUT_OF_RANGE: RejectReason
PERIOD_CLOSED: RejectReason
DUPLICATE_CONFLICT: RejectReason
NO_APPLICABLE_RATE: RejectReason
NOTICE_REASON_UNSPECIFIED: NoticeReason
NOTICE_RESERVATION_UNKNOWN: NoticeReason
NOTICE_RESERVATION_ALREADY_SETTLED: NoticeReason
NOTICE_RESERVATION_RELEASED: NoticeReason
NOTICE_RESERVATION_EXPIRED: NoticeReason

class UsageEvent(_message.Message):
    __slots__ = ("transaction_id", "customer_id", "event_type", "timestamp_ms", "dimensions", "values", "reservation_id")
    class DimensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    customer_id: str
    event_type: str
    timestamp_ms: int
    dimensions: _containers.ScalarMap[str, str]
    values: _containers.ScalarMap[str, float]
    reservation_id: str
    def __init__(self, transaction_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., event_type: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., dimensions: _Optional[_Mapping[str, str]] = ..., values: _Optional[_Mapping[str, float]] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class UsageBatch(_message.Message):
    __slots__ = ("batch_id", "events")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    events: _containers.RepeatedCompositeFieldContainer[UsageEvent]
    def __init__(self, batch_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[UsageEvent, _Mapping]]] = ...) -> None: ...

class EventRejection(_message.Message):
    __slots__ = ("index", "transaction_id", "reason", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    transaction_id: str
    reason: RejectReason
    message: str
    def __init__(self, index: _Optional[int] = ..., transaction_id: _Optional[str] = ..., reason: _Optional[_Union[RejectReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class IngestAck(_message.Message):
    __slots__ = ("batch_id", "accepted", "duplicates", "rejected", "journal_seq", "notices")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    NOTICES_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    accepted: int
    duplicates: int
    rejected: _containers.RepeatedCompositeFieldContainer[EventRejection]
    journal_seq: int
    notices: _containers.RepeatedCompositeFieldContainer[EventNotice]
    def __init__(self, batch_id: _Optional[str] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[EventRejection, _Mapping]]] = ..., journal_seq: _Optional[int] = ..., notices: _Optional[_Iterable[_Union[EventNotice, _Mapping]]] = ...) -> None: ...

class EventNotice(_message.Message):
    __slots__ = ("index", "transaction_id", "reservation_id", "reason", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    transaction_id: str
    reservation_id: str
    reason: NoticeReason
    message: str
    def __init__(self, index: _Optional[int] = ..., transaction_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., reason: _Optional[_Union[NoticeReason, str]] = ..., message: _Optional[str] = ...) -> None: ...
