import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InvoiceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVOICE_STATUS_UNSPECIFIED: _ClassVar[InvoiceStatus]
    INVOICE_DRAFT: _ClassVar[InvoiceStatus]
    INVOICE_FINAL: _ClassVar[InvoiceStatus]
INVOICE_STATUS_UNSPECIFIED: InvoiceStatus
INVOICE_DRAFT: InvoiceStatus
INVOICE_FINAL: InvoiceStatus

class PreviewInvoiceRequest(_message.Message):
    __slots__ = ("customer_id", "period_start")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    period_start: _timestamp_pb2.Timestamp
    def __init__(self, customer_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AppliedPrice(_message.Message):
    __slots__ = ("version", "unit_price", "quantity", "amount", "events", "rate_card_id")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    version: int
    unit_price: str
    quantity: str
    amount: str
    events: int
    rate_card_id: str
    def __init__(self, version: _Optional[int] = ..., unit_price: _Optional[str] = ..., quantity: _Optional[str] = ..., amount: _Optional[str] = ..., events: _Optional[int] = ..., rate_card_id: _Optional[str] = ...) -> None: ...

class InvoiceLine(_message.Message):
    __slots__ = ("line_id", "product_id", "dimensions", "quantity", "prices", "amount", "events", "overage", "credits_applied", "amount_due", "adjustments")
    class DimensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_FIELD_NUMBER: _ClassVar[int]
    CREDITS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_DUE_FIELD_NUMBER: _ClassVar[int]
    ADJUSTMENTS_FIELD_NUMBER: _ClassVar[int]
    line_id: str
    product_id: str
    dimensions: _containers.ScalarMap[str, str]
    quantity: str
    prices: _containers.RepeatedCompositeFieldContainer[AppliedPrice]
    amount: str
    events: int
    overage: str
    credits_applied: _containers.RepeatedCompositeFieldContainer[CreditApplication]
    amount_due: str
    adjustments: _containers.RepeatedCompositeFieldContainer[LineAdjustment]
    def __init__(self, line_id: _Optional[str] = ..., product_id: _Optional[str] = ..., dimensions: _Optional[_Mapping[str, str]] = ..., quantity: _Optional[str] = ..., prices: _Optional[_Iterable[_Union[AppliedPrice, _Mapping]]] = ..., amount: _Optional[str] = ..., events: _Optional[int] = ..., overage: _Optional[str] = ..., credits_applied: _Optional[_Iterable[_Union[CreditApplication, _Mapping]]] = ..., amount_due: _Optional[str] = ..., adjustments: _Optional[_Iterable[_Union[LineAdjustment, _Mapping]]] = ...) -> None: ...

class LineAdjustment(_message.Message):
    __slots__ = ("journal_seq", "hour", "rate_card_id", "old_versions", "new_version", "quantity", "events", "old_amount", "new_amount", "delta")
    JOURNAL_SEQ_FIELD_NUMBER: _ClassVar[int]
    HOUR_FIELD_NUMBER: _ClassVar[int]
    RATE_CARD_ID_FIELD_NUMBER: _ClassVar[int]
    OLD_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OLD_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    NEW_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    journal_seq: int
    hour: _timestamp_pb2.Timestamp
    rate_card_id: str
    old_versions: _containers.RepeatedScalarFieldContainer[int]
    new_version: int
    quantity: str
    events: int
    old_amount: str
    new_amount: str
    delta: str
    def __init__(self, journal_seq: _Optional[int] = ..., hour: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rate_card_id: _Optional[str] = ..., old_versions: _Optional[_Iterable[int]] = ..., new_version: _Optional[int] = ..., quantity: _Optional[str] = ..., events: _Optional[int] = ..., old_amount: _Optional[str] = ..., new_amount: _Optional[str] = ..., delta: _Optional[str] = ...) -> None: ...

class CreditApplication(_message.Message):
    __slots__ = ("grant_id", "credits")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    credits: str
    def __init__(self, grant_id: _Optional[str] = ..., credits: _Optional[str] = ...) -> None: ...

class Invoice(_message.Message):
    __slots__ = ("customer_id", "invoice_number", "status", "period_start", "period_end", "pricing_unit", "currency", "lines", "credits_applied", "overage_amount", "overage_due", "top_up_purchases", "total_due", "subtotal", "minor_unit", "rounding_adjustment", "overage_price", "contract_id", "closed_at", "grant_balances")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    PRICING_UNIT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CREDITS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_DUE_FIELD_NUMBER: _ClassVar[int]
    TOP_UP_PURCHASES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DUE_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_FIELD_NUMBER: _ClassVar[int]
    MINOR_UNIT_FIELD_NUMBER: _ClassVar[int]
    ROUNDING_ADJUSTMENT_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_PRICE_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    GRANT_BALANCES_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    invoice_number: str
    status: InvoiceStatus
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    pricing_unit: str
    currency: str
    lines: _containers.RepeatedCompositeFieldContainer[InvoiceLine]
    credits_applied: _containers.RepeatedCompositeFieldContainer[CreditApplication]
    overage_amount: str
    overage_due: str
    top_up_purchases: str
    total_due: str
    subtotal: str
    minor_unit: int
    rounding_adjustment: str
    overage_price: str
    contract_id: str
    closed_at: _timestamp_pb2.Timestamp
    grant_balances: _containers.RepeatedCompositeFieldContainer[InvoiceGrantBalance]
    def __init__(self, customer_id: _Optional[str] = ..., invoice_number: _Optional[str] = ..., status: _Optional[_Union[InvoiceStatus, str]] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., pricing_unit: _Optional[str] = ..., currency: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[InvoiceLine, _Mapping]]] = ..., credits_applied: _Optional[_Iterable[_Union[CreditApplication, _Mapping]]] = ..., overage_amount: _Optional[str] = ..., overage_due: _Optional[str] = ..., top_up_purchases: _Optional[str] = ..., total_due: _Optional[str] = ..., subtotal: _Optional[str] = ..., minor_unit: _Optional[int] = ..., rounding_adjustment: _Optional[str] = ..., overage_price: _Optional[str] = ..., contract_id: _Optional[str] = ..., closed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., grant_balances: _Optional[_Iterable[_Union[InvoiceGrantBalance, _Mapping]]] = ...) -> None: ...

class InvoiceGrantBalance(_message.Message):
    __slots__ = ("grant_id", "granted", "drawn", "remaining", "expired")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    DRAWN_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    granted: str
    drawn: str
    remaining: str
    expired: str
    def __init__(self, grant_id: _Optional[str] = ..., granted: _Optional[str] = ..., drawn: _Optional[str] = ..., remaining: _Optional[str] = ..., expired: _Optional[str] = ...) -> None: ...

class ExplainLineItemRequest(_message.Message):
    __slots__ = ("customer_id", "period_start", "line_id", "page_size", "page_token")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    period_start: _timestamp_pb2.Timestamp
    line_id: str
    page_size: int
    page_token: str
    def __init__(self, customer_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., line_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GrantDraw(_message.Message):
    __slots__ = ("grant_id", "credits")
    GRANT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    grant_id: str
    credits: str
    def __init__(self, grant_id: _Optional[str] = ..., credits: _Optional[str] = ...) -> None: ...

class ExplainedEvent(_message.Message):
    __slots__ = ("transaction_id", "timestamp_ms", "quantity", "version", "unit_price", "amount", "draws", "overage", "adjustment")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DRAWS_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_FIELD_NUMBER: _ClassVar[int]
    ADJUSTMENT_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    timestamp_ms: int
    quantity: str
    version: int
    unit_price: str
    amount: str
    draws: _containers.RepeatedCompositeFieldContainer[GrantDraw]
    overage: str
    adjustment: LineAdjustment
    def __init__(self, transaction_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., quantity: _Optional[str] = ..., version: _Optional[int] = ..., unit_price: _Optional[str] = ..., amount: _Optional[str] = ..., draws: _Optional[_Iterable[_Union[GrantDraw, _Mapping]]] = ..., overage: _Optional[str] = ..., adjustment: _Optional[_Union[LineAdjustment, _Mapping]] = ...) -> None: ...

class ExplainLineItemResponse(_message.Message):
    __slots__ = ("events", "next_page_token", "line_amount", "line_quantity")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LINE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    LINE_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[ExplainedEvent]
    next_page_token: str
    line_amount: str
    line_quantity: str
    def __init__(self, events: _Optional[_Iterable[_Union[ExplainedEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., line_amount: _Optional[str] = ..., line_quantity: _Optional[str] = ...) -> None: ...

class ClosePeriodRequest(_message.Message):
    __slots__ = ("customer_id", "period_start")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    period_start: _timestamp_pb2.Timestamp
    def __init__(self, customer_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CloseDuePeriodsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CloseDuePeriodsResponse(_message.Message):
    __slots__ = ("invoices", "invoices_made", "next_page_token")
    INVOICES_FIELD_NUMBER: _ClassVar[int]
    INVOICES_MADE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    invoices: _containers.RepeatedCompositeFieldContainer[Invoice]
    invoices_made: int
    next_page_token: str
    def __init__(self, invoices: _Optional[_Iterable[_Union[Invoice, _Mapping]]] = ..., invoices_made: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetInvoiceRequest(_message.Message):
    __slots__ = ("invoice_number",)
    INVOICE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    invoice_number: str
    def __init__(self, invoice_number: _Optional[str] = ...) -> None: ...

class ListInvoicesRequest(_message.Message):
    __slots__ = ("customer_id", "status", "period_start_from", "period_start_before", "page_size", "page_token")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FROM_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    status: InvoiceStatus
    period_start_from: _timestamp_pb2.Timestamp
    period_start_before: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, customer_id: _Optional[str] = ..., status: _Optional[_Union[InvoiceStatus, str]] = ..., period_start_from: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_start_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInvoicesResponse(_message.Message):
    __slots__ = ("invoices", "next_page_token")
    INVOICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    invoices: _containers.RepeatedCompositeFieldContainer[Invoice]
    next_page_token: str
    def __init__(self, invoices: _Optional[_Iterable[_Union[Invoice, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetRevenueReportRequest(_message.Message):
    __slots__ = ("period_start", "period_end", "customer_id")
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    customer_id: str
    def __init__(self, period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., customer_id: _Optional[str] = ...) -> None: ...

class RevenueLine(_message.Message):
    __slots__ = ("product_id", "period_start", "recognized", "deferred", "breakage", "customer_id", "recognized_credits", "recognized_overage", "period_end")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZED_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    BREAKAGE_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZED_CREDITS_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZED_OVERAGE_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    period_start: _timestamp_pb2.Timestamp
    recognized: str
    deferred: str
    breakage: str
    customer_id: str
    recognized_credits: str
    recognized_overage: str
    period_end: _timestamp_pb2.Timestamp
    def __init__(self, product_id: _Optional[str] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recognized: _Optional[str] = ..., deferred: _Optional[str] = ..., breakage: _Optional[str] = ..., customer_id: _Optional[str] = ..., recognized_credits: _Optional[str] = ..., recognized_overage: _Optional[str] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RevenueReconciliation(_message.Message):
    __slots__ = ("deferred_start", "prepaid_sold", "recognized_credits", "breakage", "deferred_end", "reconciles", "recognized_overage", "recognized")
    DEFERRED_START_FIELD_NUMBER: _ClassVar[int]
    PREPAID_SOLD_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZED_CREDITS_FIELD_NUMBER: _ClassVar[int]
    BREAKAGE_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_END_FIELD_NUMBER: _ClassVar[int]
    RECONCILES_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZED_OVERAGE_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZED_FIELD_NUMBER: _ClassVar[int]
    deferred_start: str
    prepaid_sold: str
    recognized_credits: str
    breakage: str
    deferred_end: str
    reconciles: bool
    recognized_overage: str
    recognized: str
    def __init__(self, deferred_start: _Optional[str] = ..., prepaid_sold: _Optional[str] = ..., recognized_credits: _Optional[str] = ..., breakage: _Optional[str] = ..., deferred_end: _Optional[str] = ..., reconciles: _Optional[bool] = ..., recognized_overage: _Optional[str] = ..., recognized: _Optional[str] = ...) -> None: ...

class RevenueReport(_message.Message):
    __slots__ = ("currency", "lines", "customer_lines", "reconciliation")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_LINES_FIELD_NUMBER: _ClassVar[int]
    RECONCILIATION_FIELD_NUMBER: _ClassVar[int]
    currency: str
    lines: _containers.RepeatedCompositeFieldContainer[RevenueLine]
    customer_lines: _containers.RepeatedCompositeFieldContainer[RevenueLine]
    reconciliation: RevenueReconciliation
    def __init__(self, currency: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[RevenueLine, _Mapping]]] = ..., customer_lines: _Optional[_Iterable[_Union[RevenueLine, _Mapping]]] = ..., reconciliation: _Optional[_Union[RevenueReconciliation, _Mapping]] = ...) -> None: ...
