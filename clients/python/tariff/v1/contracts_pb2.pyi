import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OveragePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OVERAGE_POLICY_UNSPECIFIED: _ClassVar[OveragePolicy]
    ALLOW: _ClassVar[OveragePolicy]
    BLOCK: _ClassVar[OveragePolicy]

class GrantKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRANT_KIND_UNSPECIFIED: _ClassVar[GrantKind]
    PREPAID: _ClassVar[GrantKind]
    PROMOTIONAL: _ClassVar[GrantKind]
    ROLLOVER: _ClassVar[GrantKind]
    TOP_UP: _ClassVar[GrantKind]
OVERAGE_POLICY_UNSPECIFIED: OveragePolicy
ALLOW: OveragePolicy
BLOCK: OveragePolicy
GRANT_KIND_UNSPECIFIED: GrantKind
PREPAID: GrantKind
PROMOTIONAL: GrantKind
ROLLOVER: GrantKind
TOP_UP: GrantKind

class Customer(_message.Message):
    __slots__ = ("id", "name", "attributes", "created_at")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    attributes: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCustomerRequest(_message.Message):
    __slots__ = ("id", "name", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetCustomerRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListCustomersRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCustomersResponse(_message.Message):
    __slots__ = ("customers", "next_page_token")
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customers: _containers.RepeatedCompositeFieldContainer[Customer]
    next_page_token: str
    def __init__(self, customers: _Optional[_Iterable[_Union[Customer, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PriceOverride(_message.Message):
    __slots__ = ("id", "product_id", "match", "multiplier", "price", "starting_at", "ending_before")
    class MatchEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    STARTING_AT_FIELD_NUMBER: _ClassVar[int]
    ENDING_BEFORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    product_id: str
    match: _containers.ScalarMap[str, str]
    multiplier: str
    price: str
    starting_at: _timestamp_pb2.Timestamp
    ending_before: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., product_id: _Optional[str] = ..., match: _Optional[_Mapping[str, str]] = ..., multiplier: _Optional[str] = ..., price: _Optional[str] = ..., starting_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ending_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TopUpPolicy(_message.Message):
    __slots__ = ("threshold", "recharge_to", "price_per_credit", "max_per_period", "currency")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RECHARGE_TO_FIELD_NUMBER: _ClassVar[int]
    PRICE_PER_CREDIT_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_PERIOD_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    threshold: str
    recharge_to: str
    price_per_credit: str
    max_per_period: int
    currency: str
    def __init__(self, threshold: _Optional[str] = ..., recharge_to: _Optional[str] = ..., price_per_credit: _Optional[str] = ..., max_per_period: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class Contract(_message.Message):
    __slots__ = ("id", "customer_id", "rate_card_id", "starting_at", "ending_before", "overrides", "grants", "overage_policy", "overage_price", "top_up", "currency")
    ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    STARTING_AT_FIELD_NUMBER: _ClassVar[int]
    ENDING_BEFORE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_POLICY_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_PRICE_FIELD_NUMBER: _ClassVar[int]
    TOP_UP_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    id: str
    customer_id: str
    rate_card_id: str
    starting_at: _timestamp_pb2.Timestamp
    ending_before: _timestamp_pb2.Timestamp
    overrides: _containers.RepeatedCompositeFieldContainer[PriceOverride]
    grants: _containers.RepeatedCompositeFieldContainer[Grant]
    overage_policy: OveragePolicy
    overage_price: str
    top_up: TopUpPolicy
    currency: str
    def __init__(self, id: _Optional[str] = ..., customer_id: _Optional[str] = ..., rate_card_id: _Optional[str] = ..., starting_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ending_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., overrides: _Optional[_Iterable[_Union[PriceOverride, _Mapping]]] = ..., grants: _Optional[_Iterable[_Union[Grant, _Mapping]]] = ..., overage_policy: _Optional[_Union[OveragePolicy, str]] = ..., overage_price: _Optional[str] = ..., top_up: _Optional[_Union[TopUpPolicy, _Mapping]] = ..., currency: _Optional[str] = ...) -> None: ...

class CreateContractRequest(_message.Message):
    __slots__ = ("id", "customer_id", "rate_card_id", "starting_at", "ending_before", "overage_policy", "overage_price", "currency")
    ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    STARTING_AT_FIELD_NUMBER: _ClassVar[int]
    ENDING_BEFORE_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_POLICY_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_PRICE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    id: str
    customer_id: str
    rate_card_id: str
    starting_at: _timestamp_pb2.Timestamp
    ending_before: _timestamp_pb2.Timestamp
    overage_policy: OveragePolicy
    overage_price: str
    currency: str
    def __init__(self, id: _Optional[str] = ..., customer_id: _Optional[str] = ..., rate_card_id: _Optional[str] = ..., starting_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ending_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., overage_policy: _Optional[_Union[OveragePolicy, str]] = ..., overage_price: _Optional[str] = ..., currency: _Optional[str] = ...) -> None: ...

class GetContractRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class AddOverrideRequest(_message.Message):
    __slots__ = ("contract_id", "override")
    CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    contract_id: str
    override: PriceOverride
    def __init__(self, contract_id: _Optional[str] = ..., override: _Optional[_Union[PriceOverride, _Mapping]] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("id", "customer_id", "contract_id", "kind", "amount", "paid_amount", "priority", "applicable_product_ids", "starts_at", "expires_at", "rollover_fraction", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PAID_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    APPLICABLE_PRODUCT_IDS_FIELD_NUMBER: _ClassVar[int]
    STARTS_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ROLLOVER_FRACTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    customer_id: str
    contract_id: str
    kind: GrantKind
    amount: str
    paid_amount: str
    priority: int
    applicable_product_ids: _containers.RepeatedScalarFieldContainer[str]
    starts_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    rollover_fraction: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., customer_id: _Optional[str] = ..., contract_id: _Optional[str] = ..., kind: _Optional[_Union[GrantKind, str]] = ..., amount: _Optional[str] = ..., paid_amount: _Optional[str] = ..., priority: _Optional[int] = ..., applicable_product_ids: _Optional[_Iterable[str]] = ..., starts_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rollover_fraction: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GrantCreditsRequest(_message.Message):
    __slots__ = ("grant", "request_id")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    grant: Grant
    request_id: str
    def __init__(self, grant: _Optional[_Union[Grant, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SetTopUpPolicyRequest(_message.Message):
    __slots__ = ("contract_id", "top_up")
    CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_UP_FIELD_NUMBER: _ClassVar[int]
    contract_id: str
    top_up: TopUpPolicy
    def __init__(self, contract_id: _Optional[str] = ..., top_up: _Optional[_Union[TopUpPolicy, _Mapping]] = ...) -> None: ...

class EndContractRequest(_message.Message):
    __slots__ = ("contract_id", "ending_before")
    CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    ENDING_BEFORE_FIELD_NUMBER: _ClassVar[int]
    contract_id: str
    ending_before: _timestamp_pb2.Timestamp
    def __init__(self, contract_id: _Optional[str] = ..., ending_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExpireGrantRequest(_message.Message):
    __slots__ = ("customer_id", "grant_id", "expires_at")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    grant_id: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, customer_id: _Optional[str] = ..., grant_id: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EndOverrideRequest(_message.Message):
    __slots__ = ("contract_id", "override_id", "ending_before")
    CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDING_BEFORE_FIELD_NUMBER: _ClassVar[int]
    contract_id: str
    override_id: str
    ending_before: _timestamp_pb2.Timestamp
    def __init__(self, contract_id: _Optional[str] = ..., override_id: _Optional[str] = ..., ending_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
