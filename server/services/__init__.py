"""gRPC servicers: proto in, engine command or read, proto out, one module per service. Errors leave through
server/errors.py.

State changes go through the Sequencer (answered once durable); reads read the engine directly.
"""

from server.services.alerts import AlertService
from server.services.balance import BalanceService
from server.services.common import INTAKE_BYTES_MAX_DEFAULT, wall_ms
from server.services.contracts import ContractService
from server.services.invoices import InvoiceService
from server.services.pricing import PricingService
from server.services.usage import IntakeBudget, UsageService

__all__ = [
    "INTAKE_BYTES_MAX_DEFAULT",
    "AlertService",
    "BalanceService",
    "ContractService",
    "IntakeBudget",
    "InvoiceService",
    "PricingService",
    "UsageService",
    "wall_ms",
]
