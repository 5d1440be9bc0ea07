import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AlertType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_TYPE_UNSPECIFIED: _ClassVar[AlertType]
    LOW_BALANCE: _ClassVar[AlertType]
    SPEND_THRESHOLD: _ClassVar[AlertType]
    CREDITS_EXHAUSTED: _ClassVar[AlertType]
    TOP_UP_EXECUTED: _ClassVar[AlertType]
    RESERVATION_EXPIRED: _ClassVar[AlertType]
ALERT_TYPE_UNSPECIFIED: AlertType
LOW_BALANCE: AlertType
SPEND_THRESHOLD: AlertType
CREDITS_EXHAUSTED: AlertType
TOP_UP_EXECUTED: AlertType
RESERVATION_EXPIRED: AlertType

class CreateAlertRequest(_message.Message):
    __slots__ = ("customer_id", "all", "type", "threshold", "id")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    all: bool
    type: AlertType
    threshold: str
    id: str
    def __init__(self, customer_id: _Optional[str] = ..., all: _Optional[bool] = ..., type: _Optional[_Union[AlertType, str]] = ..., threshold: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class AlertRule(_message.Message):
    __slots__ = ("id", "customer_id", "all", "type", "threshold")
    ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    id: str
    customer_id: str
    all: bool
    type: AlertType
    threshold: str
    def __init__(self, id: _Optional[str] = ..., customer_id: _Optional[str] = ..., all: _Optional[bool] = ..., type: _Optional[_Union[AlertType, str]] = ..., threshold: _Optional[str] = ...) -> None: ...

class WatchAlertsRequest(_message.Message):
    __slots__ = ("after_seq",)
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    def __init__(self, after_seq: _Optional[int] = ...) -> None: ...

class ListAlertRulesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAlertRulesResponse(_message.Message):
    __slots__ = ("rules", "next_page_token")
    RULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[AlertRule]
    next_page_token: str
    def __init__(self, rules: _Optional[_Iterable[_Union[AlertRule, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteAlertRuleRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("seq", "rule_id", "customer_id", "type", "message", "time", "details", "journal_seq")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    rule_id: str
    customer_id: str
    type: AlertType
    message: str
    time: _timestamp_pb2.Timestamp
    details: _containers.ScalarMap[str, str]
    journal_seq: int
    def __init__(self, seq: _Optional[int] = ..., rule_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., type: _Optional[_Union[AlertType, str]] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., details: _Optional[_Mapping[str, str]] = ..., journal_seq: _Optional[int] = ...) -> None: ...
