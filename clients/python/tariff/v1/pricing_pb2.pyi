import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    SUM: _ClassVar[Aggregation]
    COUNT: _ClassVar[Aggregation]
    MAX: _ClassVar[Aggregation]
    UNIQUE_COUNT: _ClassVar[Aggregation]
    LATEST: _ClassVar[Aggregation]

class TierMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_MODE_UNSPECIFIED: _ClassVar[TierMode]
    GRADUATED: _ClassVar[TierMode]
    VOLUME: _ClassVar[TierMode]

class VersionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_STATE_UNSPECIFIED: _ClassVar[VersionState]
    DRAFT: _ClassVar[VersionState]
    PUBLISHED: _ClassVar[VersionState]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    ERROR: _ClassVar[Severity]
    WARNING: _ClassVar[Severity]

class ChangeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_KIND_UNSPECIFIED: _ClassVar[ChangeKind]
    ADDED: _ClassVar[ChangeKind]
    REMOVED: _ClassVar[ChangeKind]
    CHANGED: _ClassVar[ChangeKind]
    REPRICED: _ClassVar[ChangeKind]
AGGREGATION_UNSPECIFIED: Aggregation
SUM: Aggregation
COUNT: Aggregation
MAX: Aggregation
UNIQUE_COUNT: Aggregation
LATEST: Aggregation
TIER_MODE_UNSPECIFIED: TierMode
GRADUATED: TierMode
VOLUME: TierMode
VERSION_STATE_UNSPECIFIED: VersionState
DRAFT: VersionState
PUBLISHED: VersionState
SEVERITY_UNSPECIFIED: Severity
ERROR: Severity
WARNING: Severity
CHANGE_KIND_UNSPECIFIED: ChangeKind
ADDED: ChangeKind
REMOVED: ChangeKind
CHANGED: ChangeKind
REPRICED: ChangeKind

class Product(_message.Message):
    __slots__ = ("id", "name", "event_type", "aggregation", "value_key", "filters", "pricing_dimensions", "unit")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    VALUE_KEY_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    PRICING_DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    event_type: str
    aggregation: Aggregation
    value_key: str
    filters: _containers.ScalarMap[str, str]
    pricing_dimensions: _containers.RepeatedScalarFieldContainer[str]
    unit: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., event_type: _Optional[str] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., value_key: _Optional[str] = ..., filters: _Optional[_Mapping[str, str]] = ..., pricing_dimensions: _Optional[_Iterable[str]] = ..., unit: _Optional[str] = ...) -> None: ...

class CreateProductRequest(_message.Message):
    __slots__ = ("product",)
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    product: Product
    def __init__(self, product: _Optional[_Union[Product, _Mapping]] = ...) -> None: ...

class ListProductsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProductsResponse(_message.Message):
    __slots__ = ("products",)
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[Product]
    def __init__(self, products: _Optional[_Iterable[_Union[Product, _Mapping]]] = ...) -> None: ...

class Tier(_message.Message):
    __slots__ = ("up_to", "unit_price", "flat_price")
    UP_TO_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    FLAT_PRICE_FIELD_NUMBER: _ClassVar[int]
    up_to: str
    unit_price: str
    flat_price: str
    def __init__(self, up_to: _Optional[str] = ..., unit_price: _Optional[str] = ..., flat_price: _Optional[str] = ...) -> None: ...

class UnitPrice(_message.Message):
    __slots__ = ("price", "per_units")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    PER_UNITS_FIELD_NUMBER: _ClassVar[int]
    price: str
    per_units: str
    def __init__(self, price: _Optional[str] = ..., per_units: _Optional[str] = ...) -> None: ...

class TieredPrice(_message.Message):
    __slots__ = ("mode", "tiers", "per_units")
    MODE_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    PER_UNITS_FIELD_NUMBER: _ClassVar[int]
    mode: TierMode
    tiers: _containers.RepeatedCompositeFieldContainer[Tier]
    per_units: str
    def __init__(self, mode: _Optional[_Union[TierMode, str]] = ..., tiers: _Optional[_Iterable[_Union[Tier, _Mapping]]] = ..., per_units: _Optional[str] = ...) -> None: ...

class PackagePrice(_message.Message):
    __slots__ = ("package_size", "package_price")
    PACKAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_PRICE_FIELD_NUMBER: _ClassVar[int]
    package_size: str
    package_price: str
    def __init__(self, package_size: _Optional[str] = ..., package_price: _Optional[str] = ...) -> None: ...

class FlatPrice(_message.Message):
    __slots__ = ("price",)
    PRICE_FIELD_NUMBER: _ClassVar[int]
    price: str
    def __init__(self, price: _Optional[str] = ...) -> None: ...

class Rate(_message.Message):
    __slots__ = ("product_id", "match", "unit", "tiered", "package", "flat")
    class MatchEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    TIERED_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_FIELD_NUMBER: _ClassVar[int]
    FLAT_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    match: _containers.ScalarMap[str, str]
    unit: UnitPrice
    tiered: TieredPrice
    package: PackagePrice
    flat: FlatPrice
    def __init__(self, product_id: _Optional[str] = ..., match: _Optional[_Mapping[str, str]] = ..., unit: _Optional[_Union[UnitPrice, _Mapping]] = ..., tiered: _Optional[_Union[TieredPrice, _Mapping]] = ..., package: _Optional[_Union[PackagePrice, _Mapping]] = ..., flat: _Optional[_Union[FlatPrice, _Mapping]] = ...) -> None: ...

class RateKey(_message.Message):
    __slots__ = ("product_id", "match")
    class MatchEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    match: _containers.ScalarMap[str, str]
    def __init__(self, product_id: _Optional[str] = ..., match: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Cohort(_message.Message):
    __slots__ = ("customer_ids", "attributes", "customers_created_after")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CUSTOMER_IDS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_CREATED_AFTER_FIELD_NUMBER: _ClassVar[int]
    customer_ids: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.ScalarMap[str, str]
    customers_created_after: _timestamp_pb2.Timestamp
    def __init__(self, customer_ids: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Mapping[str, str]] = ..., customers_created_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RateCardVersion(_message.Message):
    __slots__ = ("rate_card_id", "version", "state", "based_on_version", "parameters", "rates", "change_note", "created_at", "effective_from", "published_at", "cohort", "created_by", "rollback_to_version", "rollback_from_version")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BASED_ON_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RATES_FIELD_NUMBER: _ClassVar[int]
    CHANGE_NOTE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_FROM_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AT_FIELD_NUMBER: _ClassVar[int]
    COHORT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    rate_card_id: str
    version: int
    state: VersionState
    based_on_version: int
    parameters: _containers.ScalarMap[str, str]
    rates: _containers.RepeatedCompositeFieldContainer[Rate]
    change_note: str
    created_at: _timestamp_pb2.Timestamp
    effective_from: _timestamp_pb2.Timestamp
    published_at: _timestamp_pb2.Timestamp
    cohort: Cohort
    created_by: str
    rollback_to_version: int
    rollback_from_version: int
    def __init__(self, rate_card_id: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[_Union[VersionState, str]] = ..., based_on_version: _Optional[int] = ..., parameters: _Optional[_Mapping[str, str]] = ..., rates: _Optional[_Iterable[_Union[Rate, _Mapping]]] = ..., change_note: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., effective_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., published_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cohort: _Optional[_Union[Cohort, _Mapping]] = ..., created_by: _Optional[str] = ..., rollback_to_version: _Optional[int] = ..., rollback_from_version: _Optional[int] = ...) -> None: ...

class RateCard(_message.Message):
    __slots__ = ("id", "name", "pricing_unit", "created_at", "latest_version", "current_version")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRICING_UNIT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    pricing_unit: str
    created_at: _timestamp_pb2.Timestamp
    latest_version: int
    current_version: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., pricing_unit: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latest_version: _Optional[int] = ..., current_version: _Optional[int] = ...) -> None: ...

class CreateRateCardRequest(_message.Message):
    __slots__ = ("id", "name", "pricing_unit")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRICING_UNIT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    pricing_unit: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., pricing_unit: _Optional[str] = ...) -> None: ...

class GetRateCardRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListRateCardsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRateCardsResponse(_message.Message):
    __slots__ = ("rate_cards", "next_page_token")
    RATE_CARDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rate_cards: _containers.RepeatedCompositeFieldContainer[RateCard]
    next_page_token: str
    def __init__(self, rate_cards: _Optional[_Iterable[_Union[RateCard, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateDraftVersionRequest(_message.Message):
    __slots__ = ("rate_card_id", "based_on_version", "set_parameters", "upsert_rates", "remove_rates", "change_note", "remove_parameters", "request_id")
    class SetParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    BASED_ON_VERSION_FIELD_NUMBER: _ClassVar[int]
    SET_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    UPSERT_RATES_FIELD_NUMBER: _ClassVar[int]
    REMOVE_RATES_FIELD_NUMBER: _ClassVar[int]
    CHANGE_NOTE_FIELD_NUMBER: _ClassVar[int]
    REMOVE_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    rate_card_id: str
    based_on_version: int
    set_parameters: _containers.ScalarMap[str, str]
    upsert_rates: _containers.RepeatedCompositeFieldContainer[Rate]
    remove_rates: _containers.RepeatedCompositeFieldContainer[RateKey]
    change_note: str
    remove_parameters: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, rate_card_id: _Optional[str] = ..., based_on_version: _Optional[int] = ..., set_parameters: _Optional[_Mapping[str, str]] = ..., upsert_rates: _Optional[_Iterable[_Union[Rate, _Mapping]]] = ..., remove_rates: _Optional[_Iterable[_Union[RateKey, _Mapping]]] = ..., change_note: _Optional[str] = ..., remove_parameters: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ValidateVersionRequest(_message.Message):
    __slots__ = ("rate_card_id", "version")
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    rate_card_id: str
    version: int
    def __init__(self, rate_card_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("severity", "path", "message")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    severity: Severity
    path: str
    message: str
    def __init__(self, severity: _Optional[_Union[Severity, str]] = ..., path: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ValidationReport(_message.Message):
    __slots__ = ("ok", "findings")
    OK_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    def __init__(self, ok: _Optional[bool] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ...) -> None: ...

class PublishVersionRequest(_message.Message):
    __slots__ = ("rate_card_id", "version", "effective_from", "cohort")
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_FROM_FIELD_NUMBER: _ClassVar[int]
    COHORT_FIELD_NUMBER: _ClassVar[int]
    rate_card_id: str
    version: int
    effective_from: _timestamp_pb2.Timestamp
    cohort: Cohort
    def __init__(self, rate_card_id: _Optional[str] = ..., version: _Optional[int] = ..., effective_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cohort: _Optional[_Union[Cohort, _Mapping]] = ...) -> None: ...

class PublishVersionResponse(_message.Message):
    __slots__ = ("version", "events_rerated", "validation", "customers_rerated", "buckets_rerated", "rerated_amount_delta", "closed_buckets_left_alone", "closed_events_left_alone", "closed_amount_left_alone", "left_alone_reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EVENTS_RERATED_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERS_RERATED_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_RERATED_FIELD_NUMBER: _ClassVar[int]
    RERATED_AMOUNT_DELTA_FIELD_NUMBER: _ClassVar[int]
    CLOSED_BUCKETS_LEFT_ALONE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_EVENTS_LEFT_ALONE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AMOUNT_LEFT_ALONE_FIELD_NUMBER: _ClassVar[int]
    LEFT_ALONE_REASON_FIELD_NUMBER: _ClassVar[int]
    version: RateCardVersion
    events_rerated: int
    validation: ValidationReport
    customers_rerated: int
    buckets_rerated: int
    rerated_amount_delta: str
    closed_buckets_left_alone: int
    closed_events_left_alone: int
    closed_amount_left_alone: str
    left_alone_reason: str
    def __init__(self, version: _Optional[_Union[RateCardVersion, _Mapping]] = ..., events_rerated: _Optional[int] = ..., validation: _Optional[_Union[ValidationReport, _Mapping]] = ..., customers_rerated: _Optional[int] = ..., buckets_rerated: _Optional[int] = ..., rerated_amount_delta: _Optional[str] = ..., closed_buckets_left_alone: _Optional[int] = ..., closed_events_left_alone: _Optional[int] = ..., closed_amount_left_alone: _Optional[str] = ..., left_alone_reason: _Optional[str] = ...) -> None: ...

class RollbackRateCardRequest(_message.Message):
    __slots__ = ("rate_card_id", "to_version", "effective_from")
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_FROM_FIELD_NUMBER: _ClassVar[int]
    rate_card_id: str
    to_version: int
    effective_from: _timestamp_pb2.Timestamp
    def __init__(self, rate_card_id: _Optional[str] = ..., to_version: _Optional[int] = ..., effective_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("rate_card_id", "page_size", "page_token")
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rate_card_id: str
    page_size: int
    page_token: str
    def __init__(self, rate_card_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[RateCardVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[RateCardVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("rate_card_id", "version", "at")
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    rate_card_id: str
    version: int
    at: _timestamp_pb2.Timestamp
    def __init__(self, rate_card_id: _Optional[str] = ..., version: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DiffVersionsRequest(_message.Message):
    __slots__ = ("rate_card_id", "from_version", "to_version")
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    rate_card_id: str
    from_version: int
    to_version: int
    def __init__(self, rate_card_id: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ...) -> None: ...

class ParameterChange(_message.Message):
    __slots__ = ("name", "old_value", "new_value", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    old_value: str
    new_value: str
    kind: ChangeKind
    def __init__(self, name: _Optional[str] = ..., old_value: _Optional[str] = ..., new_value: _Optional[str] = ..., kind: _Optional[_Union[ChangeKind, str]] = ...) -> None: ...

class PriceFieldChange(_message.Message):
    __slots__ = ("path", "old_formula", "new_formula", "old_price", "new_price", "old_problem", "new_problem", "has_old", "has_new")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OLD_FORMULA_FIELD_NUMBER: _ClassVar[int]
    NEW_FORMULA_FIELD_NUMBER: _ClassVar[int]
    OLD_PRICE_FIELD_NUMBER: _ClassVar[int]
    NEW_PRICE_FIELD_NUMBER: _ClassVar[int]
    OLD_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    NEW_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    HAS_OLD_FIELD_NUMBER: _ClassVar[int]
    HAS_NEW_FIELD_NUMBER: _ClassVar[int]
    path: str
    old_formula: str
    new_formula: str
    old_price: str
    new_price: str
    old_problem: str
    new_problem: str
    has_old: bool
    has_new: bool
    def __init__(self, path: _Optional[str] = ..., old_formula: _Optional[str] = ..., new_formula: _Optional[str] = ..., old_price: _Optional[str] = ..., new_price: _Optional[str] = ..., old_problem: _Optional[str] = ..., new_problem: _Optional[str] = ..., has_old: _Optional[bool] = ..., has_new: _Optional[bool] = ...) -> None: ...

class RateChange(_message.Message):
    __slots__ = ("key", "old_rate", "new_rate", "kind", "fields")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OLD_RATE_FIELD_NUMBER: _ClassVar[int]
    NEW_RATE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    key: RateKey
    old_rate: Rate
    new_rate: Rate
    kind: ChangeKind
    fields: _containers.RepeatedCompositeFieldContainer[PriceFieldChange]
    def __init__(self, key: _Optional[_Union[RateKey, _Mapping]] = ..., old_rate: _Optional[_Union[Rate, _Mapping]] = ..., new_rate: _Optional[_Union[Rate, _Mapping]] = ..., kind: _Optional[_Union[ChangeKind, str]] = ..., fields: _Optional[_Iterable[_Union[PriceFieldChange, _Mapping]]] = ...) -> None: ...

class DiffVersionsResponse(_message.Message):
    __slots__ = ("parameters", "rates")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RATES_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterChange]
    rates: _containers.RepeatedCompositeFieldContainer[RateChange]
    def __init__(self, parameters: _Optional[_Iterable[_Union[ParameterChange, _Mapping]]] = ..., rates: _Optional[_Iterable[_Union[RateChange, _Mapping]]] = ...) -> None: ...

class SimulateVersionRequest(_message.Message):
    __slots__ = ("rate_card_id", "version", "period_start", "period_end", "customer_ids")
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_IDS_FIELD_NUMBER: _ClassVar[int]
    rate_card_id: str
    version: int
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    customer_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rate_card_id: _Optional[str] = ..., version: _Optional[int] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., customer_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SimulatedAmount(_message.Message):
    __slots__ = ("customer_id", "product_id", "current_amount", "simulated_amount", "delta")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    product_id: str
    current_amount: str
    simulated_amount: str
    delta: str
    def __init__(self, customer_id: _Optional[str] = ..., product_id: _Optional[str] = ..., current_amount: _Optional[str] = ..., simulated_amount: _Optional[str] = ..., delta: _Optional[str] = ...) -> None: ...

class SimulateVersionResponse(_message.Message):
    __slots__ = ("amounts", "totals")
    AMOUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    amounts: _containers.RepeatedCompositeFieldContainer[SimulatedAmount]
    totals: SimulatedTotals
    def __init__(self, amounts: _Optional[_Iterable[_Union[SimulatedAmount, _Mapping]]] = ..., totals: _Optional[_Union[SimulatedTotals, _Mapping]] = ...) -> None: ...

class SimulatedTotals(_message.Message):
    __slots__ = ("current_amount", "simulated_amount", "delta")
    CURRENT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    current_amount: str
    simulated_amount: str
    delta: str
    def __init__(self, current_amount: _Optional[str] = ..., simulated_amount: _Optional[str] = ..., delta: _Optional[str] = ...) -> None: ...

class GetAuditLogRequest(_message.Message):
    __slots__ = ("after_seq", "page_size", "target", "actor", "action", "start_time", "end_time")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    page_size: int
    target: str
    actor: str
    action: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, after_seq: _Optional[int] = ..., page_size: _Optional[int] = ..., target: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "time", "actor", "action", "target", "diff")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    actor: str
    action: str
    target: str
    diff: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., diff: _Optional[str] = ...) -> None: ...

class GetAuditLogResponse(_message.Message):
    __slots__ = ("entries", "next_after_seq")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    next_after_seq: int
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., next_after_seq: _Optional[int] = ...) -> None: ...
