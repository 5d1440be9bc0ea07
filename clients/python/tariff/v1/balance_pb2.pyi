import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tariff.v1 import contracts_pb2 as _contracts_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetBalanceRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class GrantBalance(_message.Message):
    __slots__ = ("grant_id", "kind", "amount", "drawn", "remaining", "expired", "priority", "applicable_product_ids", "starts_at", "expires_at", "recognized_revenue", "held")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DRAWN_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    APPLICABLE_PRODUCT_IDS_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZED_REVENUE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    kind: _contracts_pb2.GrantKind
    amount: str
    drawn: str
    remaining: str
    expired: str
    priority: int
    applicable_product_ids: _containers.RepeatedScalarFieldContainer[str]
    starts_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    recognized_revenue: str
    held: str
    def __init__(self, grant_id: _Optional[str] = ..., kind: _Optional[_Union[_contracts_pb2.GrantKind, str]] = ..., amount: _Optional[str] = ..., drawn: _Optional[str] = ..., remaining: _Optional[str] = ..., expired: _Optional[str] = ..., priority: _Optional[int] = ..., applicable_product_ids: _Optional[_Iterable[str]] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recognized_revenue: _Optional[str] = ..., held: _Optional[str] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("customer_id", "credits_remaining", "credits_held", "credits_available", "grants", "period_charges", "overage_amount", "as_of_seq", "pricing_unit", "overage_due", "period_start", "period_end", "grants_left_out", "currency")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_REMAINING_FIELD_NUMBER: _ClassVar[int]
    CREDITS_HELD_FIELD_NUMBER: _ClassVar[int]
    CREDITS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_CHARGES_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    AS_OF_SEQ_FIELD_NUMBER: _ClassVar[int]
    PRICING_UNIT_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_DUE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    GRANTS_LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    credits_remaining: str
    credits_held: str
    credits_available: str
    grants: _containers.RepeatedCompositeFieldContainer[GrantBalance]
    period_charges: str
    overage_amount: str
    as_of_seq: int
    pricing_unit: str
    overage_due: str
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    grants_left_out: int
    currency: str
    def __init__(self, customer_id: _Optional[str] = ..., credits_remaining: _Optional[str] = ..., credits_held: _Optional[str] = ..., credits_available: _Optional[str] = ..., grants: _Optional[_Iterable[_Union[GrantBalance, _Mapping]]] = ..., period_charges: _Optional[str] = ..., overage_amount: _Optional[str] = ..., as_of_seq: _Optional[int] = ..., pricing_unit: _Optional[str] = ..., overage_due: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., grants_left_out: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class AuthorizeRequest(_message.Message):
    __slots__ = ("request_id", "customer_id", "event_type", "dimensions", "values", "reserve", "reservation_ttl", "reservation_id")
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
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    RESERVE_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_TTL_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    customer_id: str
    event_type: str
    dimensions: _containers.ScalarMap[str, str]
    values: _containers.ScalarMap[str, float]
    reserve: bool
    reservation_ttl: _duration_pb2.Duration
    reservation_id: str
    def __init__(self, request_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., event_type: _Optional[str] = ..., dimensions: _Optional[_Mapping[str, str]] = ..., values: _Optional[_Mapping[str, float]] = ..., reserve: _Optional[bool] = ..., reservation_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("request_id", "allowed", "reason", "estimated_cost", "credits_available", "reservation_id", "message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_COST_FIELD_NUMBER: _ClassVar[int]
    CREDITS_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    allowed: bool
    reason: str
    estimated_cost: str
    credits_available: str
    reservation_id: str
    message: str
    def __init__(self, request_id: _Optional[str] = ..., allowed: _Optional[bool] = ..., reason: _Optional[str] = ..., estimated_cost: _Optional[str] = ..., credits_available: _Optional[str] = ..., reservation_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class AuthorizeBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[AuthorizeRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[AuthorizeRequest, _Mapping]]] = ...) -> None: ...

class AuthorizeBatchResult(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[AuthorizeResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[AuthorizeResponse, _Mapping]]] = ...) -> None: ...

class ReleaseReservationRequest(_message.Message):
    __slots__ = ("customer_id", "reservation_id")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    reservation_id: str
    def __init__(self, customer_id: _Optional[str] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class ReleaseReservationResponse(_message.Message):
    __slots__ = ("released_amount",)
    RELEASED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    released_amount: str
    def __init__(self, released_amount: _Optional[str] = ...) -> None: ...

class WatchBalanceRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...
