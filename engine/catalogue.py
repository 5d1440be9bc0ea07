"""The catalogue: CreateProduct, the billable metrics."""

from __future__ import annotations

from engine import commands as cmd
from engine.control import ControlPlane, check_applied_id
from engine.errors import MADE_BY_ANOTHER_REQUEST, AlreadyExists, InvalidArgument
from engine.products import Aggregation, Product


class CatalogueCommands(ControlPlane):
    def _create_product(self, c: cmd.CreateProduct) -> Product:
        check_applied_id(c.id, "product.id")
        violations = []
        if not c.event_type:
            violations.append(("product.event_type", "is required"))
        if c.aggregation is None:
            violations.append(("product.aggregation", "is required: SUM, COUNT, MAX, UNIQUE_COUNT or LATEST"))
        elif c.aggregation is not Aggregation.COUNT and not c.value_key:
            violations.append(("product.value_key", f"is required for {c.aggregation} (which entry to read)"))
        if len(set(c.pricing_dimensions)) != len(c.pricing_dimensions) or "" in c.pricing_dimensions:
            violations.append(("product.pricing_dimensions", "must be distinct, non-empty keys"))
        if violations:
            raise InvalidArgument(violations)
        assert c.aggregation is not None
        key = f"product/{c.id}"
        print_ = self._repeat(key, c, lambda: self.state.products[c.id])
        if c.id in self.state.products:
            raise AlreadyExists(f"product {c.id!r} already exists{MADE_BY_ANOTHER_REQUEST}")
        product = Product(
            c.id,
            c.name or c.id,
            c.event_type,
            c.aggregation,
            c.value_key,
            dict(c.filters),
            tuple(c.pricing_dimensions),
            c.unit,
            c.at_ms,
            c.empty_count_missing,
            c.empty_filter_missing,
        )
        self.state.products[c.id] = product
        self._remember(key, print_)
        return product
