//! Integer price curves: the price of a period's cumulative quantity, in picos.
//!
//! Every curve computes its amount as one exact ratio of 256-bit integers over fixed-scale
//! inputs (quantities and prices at 10^-18) and rounds it half-even to picos once. A charge is
//! price(cumulative after) - price(cumulative before), so a period's charges for a bucket add up
//! to the price of its total whatever the order or batching of its events.

use ethnum::I256;
use serde::{Deserialize, Serialize};

use crate::money::{checked_mul_128, round_half_even, round_half_even_128, Fixed, Picos, FIXED_PER_PICO, SCALE};

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

/// A curve with a contract's multiplier (at 10^-18) applied to its amount, or none, and its
/// coefficients reduced by their common factor: prices at 10^-18 times quantities at 10^-18
/// pass 128 bits early (170 units at a price of 1), but once a price like 0.03 per 1000 is
/// reduced to 3 / 10^11 most amounts fit an i128, where the arithmetic is several times cheaper.
/// Both paths compute the same exact ratio, so they round to the same picos.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedCurve {
    pub curve: Curve,
    pub multiplier: Option<Fixed>,
    /// What the multiplier is counted in: 10^18, or that divided by their common factor (`with_multiplier`).
    multiplier_scale: Fixed,
    /// `with_multiplier`'s `reduce_first`: the 256-bit path divides before it multiplies by the multiplier
    /// (`mul_div_half_even`), so no intermediate product passes 2^255 where the amount fits.
    divide_first: bool,
    reduced: Option<Reduced>,
}

/// The ratio's integer coefficients divided by their greatest common divisor.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reduced {
    /// Per tier (one for UNIT, PACKAGE and FLAT): what multiplies the quantity (or the package count).
    unit: Vec<i128>,
    /// Per tier: the flat fee's term (TIERED only).
    flat: Vec<i128>,
    denominator: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl PricedCurve {
    pub fn new(curve: Curve, multiplier: Option<Fixed>) -> PricedCurve {
        let reduced = Self::reduce(&curve, multiplier, SCALE);
        PricedCurve { curve, multiplier, multiplier_scale: SCALE, divide_first: false, reduced }
    }

    /// A curve with a multiplier (at 10^-18) reduced by its common factor with 10^18 first when `reduce_first`
    /// (an override with `OverrideTable::multiplier_reduced`): the same ratio, but the 256-bit path then no
    /// longer multiplies the quantity, the price and a multiplier of 10^18 (a multiplier of 1) together, which
    /// passed 2^255 for charges far inside 128 bits and refused them as out of range; and that path divides
    /// before it multiplies by the multiplier (a multiplier of 0.999999999999999999 cannot be reduced). Without
    /// it, as `new`.
    pub fn with_multiplier(curve: Curve, multiplier: Fixed, reduce_first: bool) -> PricedCurve {
        if !reduce_first {
            return PricedCurve::new(curve, Some(multiplier));
        }
        let common = gcd(multiplier, SCALE).max(1);
        let (multiplier, scale) = (multiplier / common, SCALE / common);
        let reduced = Self::reduce(&curve, Some(multiplier), scale);
        PricedCurve { curve, multiplier: Some(multiplier), multiplier_scale: scale, divide_first: true, reduced }
    }

    /// None when a coefficient does not fit 128 bits: the curve then always prices in 256.
    fn reduce(curve: &Curve, multiplier: Option<Fixed>, multiplier_scale: Fixed) -> Option<Reduced> {
        let (mut unit, mut flat, mut denominator) = match curve {
            Curve::Unit { price, per_units } => (vec![*price], vec![], FIXED_PER_PICO.checked_mul(*per_units)?),
            Curve::Tiered { tiers, per_units, .. } => (
                tiers.iter().map(|t| t.unit_price).collect(),
                tiers.iter().map(|t| t.flat_price.checked_mul(*per_units)).collect::<Option<Vec<_>>>()?,
                FIXED_PER_PICO.checked_mul(*per_units)?,
            ),
            Curve::Package { price, .. } | Curve::Flat { price } => (vec![*price], vec![], FIXED_PER_PICO),
        };
        if let Some(multiplier) = multiplier {
            let common = gcd(multiplier, multiplier_scale).max(1);
            let (m, s) = (multiplier / common, multiplier_scale / common);
            for c in unit.iter_mut().chain(flat.iter_mut()) {
                *c = c.checked_mul(m)?;
            }
            denominator = denominator.checked_mul(s)?;
        }
        let common = unit.iter().chain(&flat).fold(denominator, |g, c| gcd(g, *c)).max(1);
        for c in unit.iter_mut().chain(flat.iter_mut()) {
            *c /= common;
        }
        Some(Reduced { unit, flat, denominator: denominator / common })
    }

    /// The price of a cumulative quantity, in picos (rounded half-even once); None on overflow.
    #[inline]
    pub fn picos(&self, quantity: Fixed) -> Option<Picos> {
        if let Some(picos) = self.reduced.as_ref().and_then(|r| self.picos_128(r, quantity)) {
            return Some(picos);
        }
        self.picos_256(quantity)
    }

    /// (`picos(before)`, `picos(after)`): a charge's two prices in one call. Rating prices both for
    /// every product of every event, and each call of `picos` spent about a quarter of its
    /// instructions saving and restoring registers. Inline: as a call of its own (once planning walked the
    /// feeding products differently) it was some 20 instructions a product more.
    #[inline]
    pub fn picos_before_after(&self, before: Fixed, after: Fixed) -> Option<(Picos, Picos)> {
        Some((self.picos(before)?, self.picos(after)?))
    }

    /// `picos` in 256 bits, when the reduced coefficients do not fit 128 (or overflow there).
    #[cold]
    #[inline(never)]
    fn picos_256(&self, quantity: Fixed) -> Option<Picos> {
        let (mut numerator, mut denominator) = self.curve.ratio(quantity)?;
        if let (Some(multiplier), true) = (self.multiplier, self.divide_first) {
            return mul_div_half_even(numerator, multiplier, denominator.checked_mul(big(self.multiplier_scale))?);
        }
        if let Some(multiplier) = self.multiplier {
            numerator = numerator.checked_mul(big(multiplier))?;
            denominator = denominator.checked_mul(big(self.multiplier_scale))?;
        }
        round_half_even(numerator, denominator)
    }

    /// `Curve::ratio` over the reduced coefficients in 128 bits; None if anything overflows.
    #[inline(always)]
    fn picos_128(&self, reduced: &Reduced, quantity: Fixed) -> Option<Picos> {
        if quantity <= 0 {
            return Some(0);
        }
        let numerator = match &self.curve {
            Curve::Unit { .. } => checked_mul_128(quantity, reduced.unit[0])?,
            Curve::Tiered { volume: true, tiers, .. } => {
                let at =
                    tiers.iter().position(|t| t.up_to.is_none_or(|up_to| quantity <= up_to)).unwrap_or(tiers.len() - 1);
                checked_mul_128(quantity, reduced.unit[at])?.checked_add(reduced.flat[at])?
            }
            Curve::Tiered { volume: false, tiers, .. } => {
                let (mut numerator, mut lower) = (0i128, 0);
                for (at, tier) in tiers.iter().enumerate() {
                    let upper = tier.up_to.map_or(quantity, |up_to| up_to.min(quantity));
                    if upper <= lower {
                        break;
                    }
                    let portion = checked_mul_128(upper - lower, reduced.unit[at])?;
                    numerator = numerator.checked_add(portion)?.checked_add(reduced.flat[at])?;
                    lower = upper;
                }
                numerator
            }
            Curve::Package { size, .. } => checked_mul_128(quantity.checked_add(size - 1)? / size, reduced.unit[0])?,
            Curve::Flat { .. } => reduced.unit[0],
        };
        round_half_even_128(numerator, reduced.denominator)
    }
}

fn big(value: i128) -> I256 {
    I256::new(value)
}

/// `round_half_even(numerator x multiplier, denominator)` without forming the product, which can pass 2^255
/// where the quotient fits: numerator = q x d + r, then r x multiplier is divided 32 bits of the multiplier at a
/// time (r < d, so each step's r x 2^32 + remainder's part stays below d x 2^33). None when the amount does not
/// fit 128 bits, or d x 2^33 does not fit 256. numerator >= 0, multiplier >= 0, denominator > 0.
fn mul_div_half_even(numerator: I256, multiplier: i128, denominator: I256) -> Option<Picos> {
    const STEP: u32 = 32;
    if numerator < I256::ZERO || multiplier < 0 {
        return None;
    }
    denominator.checked_mul(I256::new(1 << (STEP + 1)))?;
    let (whole, part) = (numerator / denominator, numerator % denominator);
    let mut quotient = whole.checked_mul(big(multiplier))?;
    // part x multiplier = carried x denominator + remainder, built from the multiplier's top 32 bits down.
    let (mut carried, mut remainder) = (I256::ZERO, I256::ZERO);
    for shift in (0..128).step_by(STEP as usize).rev() {
        let digit = big((multiplier >> shift) & ((1 << STEP) - 1));
        let step = (remainder << STEP) + part * digit;
        carried = (carried << STEP).checked_add(step / denominator)?;
        remainder = step % denominator;
    }
    quotient = quotient.checked_add(carried)?;
    let twice = remainder * 2;
    if twice > denominator || (twice == denominator && quotient & I256::ONE == I256::ONE) {
        quotient = quotient.checked_add(I256::ONE)?;
    }
    i128::try_from(quotient).ok()
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
                let packages = quantity.checked_add(size - 1)? / size; // rounded up: a started package is due
                Some((big(packages).checked_mul(big(*price))?, per_pico))
            }
            Curve::Flat { price } => Some((big(*price), per_pico)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const U: i128 = SCALE;
    const P: i128 = 1_000_000_000_000;

    fn plain(curve: Curve) -> PricedCurve {
        PricedCurve::new(curve, None)
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
        let curve = PricedCurve::new(Curve::Unit { price: 1, per_units: U }, Some(U / 2 * 3));
        // 10^6 units at 10^-18 each = 10^-12, x 1.5 = 1.5 picos -> 2 (half-even), not 1 x 1.5 rounded twice.
        assert_eq!(curve.picos(1_000_000 * U), Some(2));
    }

    #[test]
    fn a_multiplier_reduced_first_keeps_in_range_charges_in_range() {
        // 999,999,999,999,999 units at 123456789.123456789 = 1.2 x 10^35 picos; quantity x price x multiplier
        // at 10^-18 each passes 2^255 for a multiplier of 1, or of 0.999999999999999999 even reduced.
        let curve = Curve::Unit { price: 123_456_789_123_456_789 * 1_000_000_000, per_units: U };
        let quantity = 999_999_999_999_999 * U;
        let plain_picos = plain(curve.clone()).picos(quantity);
        assert_eq!(plain_picos, Some(123_456_789_123_456_665_543_210_876_543_211_000));
        assert_eq!(PricedCurve::new(curve.clone(), Some(U)).picos(quantity), None); // before the fix
        assert_eq!(PricedCurve::with_multiplier(curve.clone(), U, true).picos(quantity), plain_picos);
        let almost = PricedCurve::with_multiplier(curve, U - 1, true).picos(quantity);
        // 123456789123456665543210.876543211 x 0.999999999999999999 = 123456789123456665419754.087419754334456...
        assert_eq!(almost, Some(123_456_789_123_456_665_419_754_087_419_754_334));
    }

    #[test]
    fn overflow_is_reported_not_wrapped() {
        let curve = plain(Curve::Unit { price: i128::MAX, per_units: 1 });
        assert_eq!(curve.picos(i128::MAX), None);
        let packages = plain(Curve::Package { size: 10 * U, price: U });
        assert_eq!(packages.picos(i128::MAX), None);
    }

    fn any_curve() -> impl Strategy<Value = Curve> {
        let price = 0i128..(1000 * U);
        let per = prop_oneof![Just(U), Just(1000 * U), Just(3 * U / 7), 1i128..(10 * U)];
        prop_oneof![
            (price.clone(), per.clone()).prop_map(|(price, per_units)| Curve::Unit { price, per_units }),
            (price.clone(), 1i128..(100 * U)).prop_map(|(price, size)| Curve::Package { size, price }),
            price.clone().prop_map(|price| Curve::Flat { price }),
            (any::<bool>(), proptest::collection::vec((1i128..(500 * U), price.clone(), price), 1..4), per).prop_map(
                |(volume, raw, per_units)| {
                    let mut bound = 0;
                    let last = raw.len() - 1;
                    let tiers = raw
                        .into_iter()
                        .enumerate()
                        .map(|(i, (step, unit_price, flat_price))| {
                            bound += step;
                            Tier { up_to: (i < last).then_some(bound), unit_price, flat_price }
                        })
                        .collect();
                    Curve::Tiered { volume, tiers, per_units }
                }
            ),
        ]
    }

    proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn the_128_bit_path_prices_exactly_as_the_256_bit_one(
            curve in any_curve(),
            multiplier in proptest::option::of(0i128..(5 * U)),
            quantity in prop_oneof![0i128..(1000 * U), 0i128..(1_000_000_000_000_000 * U)],
        ) {
            let fast = PricedCurve::new(curve.clone(), multiplier);
            let wide = PricedCurve { curve: curve.clone(), multiplier, multiplier_scale: SCALE, divide_first: false, reduced: None };
            prop_assert_eq!(fast.picos(quantity), wide.picos(quantity));
            // Reduced first and dividing first: the same exact ratio, so the same picos wherever the old path
            // had an answer (and sometimes one where it overflowed).
            if let Some(multiplier) = multiplier {
                let divided = PricedCurve::with_multiplier(curve.clone(), multiplier, true);
                let mut divided_wide = divided.clone();
                divided_wide.reduced = None;
                if let Some(picos) = wide.picos(quantity) {
                    prop_assert_eq!(Some(picos), divided.picos(quantity));
                    prop_assert_eq!(Some(picos), divided_wide.picos(quantity));
                }
            }
        }

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
