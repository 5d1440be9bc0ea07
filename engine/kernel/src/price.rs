//! Integer price curves: the price of a period's cumulative quantity, in picos.
//!
//! Every curve computes its amount as one exact ratio of 256-bit integers over fixed-scale
//! inputs (quantities and prices at 10^-18) and rounds it half-even to picos once. A charge is
//! price(cumulative after) - price(cumulative before), so a period's charges for a bucket add up
//! to the price of its total whatever the order or batching of its events.

use ethnum::I256;
use serde::{Deserialize, Serialize};

use crate::money::{round_half_even, Fixed, Picos, FIXED_PER_PICO, SCALE};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    /// Inclusive upper bound of the tier's quantity; None on the last, unbounded tier.
    pub up_to: Option<Fixed>,
    pub unit_price: Fixed,
    /// Charged once when the quantity enters the tier (GRADUATED) or lies in it (VOLUME).
    pub flat_price: Fixed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Curve {
    /// `price` for every `per_units` of quantity.
    Unit { price: Fixed, per_units: Fixed },
    /// GRADUATED: each portion at its tier's price; VOLUME: the whole quantity at the price of
    /// the tier it reaches. Unit prices are per `per_units`.
    Tiered { volume: bool, tiers: Vec<Tier>, per_units: Fixed },
    /// `price` for every started package of `size`.
    Package { size: Fixed, price: Fixed },
    /// `price` once the quantity is above zero.
    Flat { price: Fixed },
}

/// A curve with a contract's multiplier (at 10^-18) applied to its amount, or none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedCurve {
    pub curve: Curve,
    pub multiplier: Option<Fixed>,
}

fn big(value: i128) -> I256 {
    I256::new(value)
}

impl Curve {
    /// The amount as an exact ratio (numerator, denominator) in picos; None on overflow.
    fn ratio(&self, quantity: Fixed) -> Option<(I256, I256)> {
        if quantity <= 0 {
            return Some((I256::ZERO, I256::ONE));
        }
        let per_pico = big(FIXED_PER_PICO);
        match self {
            // picos = q x price / (10^6 x per_units), every input at 10^-18.
            Curve::Unit { price, per_units } => {
                Some((big(quantity).checked_mul(big(*price))?, per_pico.checked_mul(big(*per_units))?))
            }
            Curve::Tiered { volume, tiers, per_units } => {
                let per = big(*per_units);
                let denominator = per_pico.checked_mul(per)?;
                let mut numerator = I256::ZERO;
                if *volume {
                    let tier = tiers.iter().find(|t| t.up_to.is_none_or(|up_to| quantity <= up_to)).or(tiers.last())?;
                    numerator = big(quantity).checked_mul(big(tier.unit_price))?;
                    numerator = numerator.checked_add(big(tier.flat_price).checked_mul(per)?)?;
                    return Some((numerator, denominator));
                }
                let mut lower: Fixed = 0;
                for tier in tiers {
                    let upper = tier.up_to.map_or(quantity, |up_to| up_to.min(quantity));
                    if upper <= lower {
                        break;
                    }
                    let portion = big(upper - lower).checked_mul(big(tier.unit_price))?;
                    let flat = big(tier.flat_price).checked_mul(per)?;
                    numerator = numerator.checked_add(portion)?.checked_add(flat)?;
                    lower = upper;
                }
                Some((numerator, denominator))
            }
            Curve::Package { size, price } => {
                let packages = (quantity + size - 1) / size; // rounded up: a started package is due
                Some((big(packages).checked_mul(big(*price))?, per_pico))
            }
            Curve::Flat { price } => Some((big(*price), per_pico)),
        }
    }
}

impl PricedCurve {
    /// The price of a cumulative quantity, in picos (rounded half-even once); None on overflow.
    pub fn picos(&self, quantity: Fixed) -> Option<Picos> {
        let (mut numerator, mut denominator) = self.curve.ratio(quantity)?;
        if let Some(multiplier) = self.multiplier {
            numerator = numerator.checked_mul(big(multiplier))?;
            denominator = denominator.checked_mul(big(SCALE))?;
        }
        round_half_even(numerator, denominator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const U: i128 = SCALE;
    const P: i128 = 1_000_000_000_000;

    fn plain(curve: Curve) -> PricedCurve {
        PricedCurve { curve, multiplier: None }
    }

    fn graduated() -> Curve {
        Curve::Tiered {
            volume: false,
            tiers: vec![
                Tier { up_to: Some(1_000_000 * U), unit_price: 3 * U / 100, flat_price: 0 },
                Tier { up_to: None, unit_price: U / 100, flat_price: 0 },
            ],
            per_units: 1000 * U,
        }
    }

    #[test]
    fn unit_prices_per_units() {
        let curve = plain(Curve::Unit { price: 3 * U / 100, per_units: 1000 * U });
        assert_eq!(curve.picos(5000 * U), Some(15 * P / 100));
        assert_eq!(curve.picos(1), Some(0)); // 3 x 10^-23: rounds to zero picos
    }

    #[test]
    fn graduated_tiers_price_each_portion() {
        let curve = plain(graduated());
        // 1,000,000 at 0.03/1000 + 500,000 at 0.01/1000 = 30 + 5
        assert_eq!(curve.picos(1_500_000 * U), Some(35 * P));
    }

    #[test]
    fn volume_tiers_price_the_whole_quantity_at_the_reached_tier() {
        let curve = plain(Curve::Tiered {
            volume: true,
            tiers: vec![
                Tier { up_to: Some(100 * U), unit_price: U, flat_price: 0 },
                Tier { up_to: None, unit_price: U / 2, flat_price: 2 * U },
            ],
            per_units: U,
        });
        assert_eq!(curve.picos(100 * U), Some(100 * P));
        assert_eq!(curve.picos(101 * U), Some(505 * P / 10 + 2 * P));
    }

    #[test]
    fn packages_round_up() {
        let curve = plain(Curve::Package { size: U, price: U });
        assert_eq!(curve.picos(1), Some(P));
        assert_eq!(curve.picos(100_000_000_000_000 * U + 1), Some(100_000_000_000_001 * P));
    }

    #[test]
    fn flat_is_due_once_the_quantity_is_positive() {
        let curve = plain(Curve::Flat { price: 10 * U });
        assert_eq!(curve.picos(0), Some(0));
        assert_eq!(curve.picos(5 * U), Some(10 * P));
    }

    #[test]
    fn a_multiplier_rounds_once() {
        let curve = PricedCurve { curve: Curve::Unit { price: 1, per_units: U }, multiplier: Some(U / 2 * 3) };
        // 10^6 units at 10^-18 each = 10^-12, x 1.5 = 1.5 picos -> 2 (half-even), not 1 x 1.5 rounded twice.
        assert_eq!(curve.picos(1_000_000 * U), Some(2));
    }

    #[test]
    fn overflow_is_reported_not_wrapped() {
        let curve = plain(Curve::Unit { price: i128::MAX, per_units: 1 });
        assert_eq!(curve.picos(i128::MAX), None);
    }

    proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn graduated_prices_never_fall(a in 0i128..(10_000_000 * U), b in 0i128..(10_000_000 * U)) {
            let curve = plain(graduated());
            let (low, high) = (a.min(b), a.max(b));
            prop_assert!(curve.picos(low).unwrap() <= curve.picos(high).unwrap());
        }

        #[test]
        fn unit_price_is_additive_within_a_pico(a in 0i128..(1_000_000_000 * U), b in 0i128..(1_000_000_000 * U)) {
            let curve = plain(Curve::Unit { price: 7 * U / 3, per_units: 1000 * U });
            let whole = curve.picos(a + b).unwrap();
            let parts = curve.picos(a).unwrap() + curve.picos(b).unwrap();
            prop_assert!((whole - parts).abs() <= 1);
        }
    }
}
