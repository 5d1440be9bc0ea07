//! Exact amounts and quantities: fixed-scale integers, one explicit rounding.
//!
//! Money is counted in picos (10^-12 of a pricing unit) in an `i128`. Quantities and prices are
//! held at 10^-18 (`SCALE`), the finest step the control plane accepts for a decimal. A price
//! is computed as one exact ratio of 256-bit integers and rounded half-even to picos once.
//! Wire doubles become quantities through their shortest round-trip decimal text, exactly, or
//! are refused: nothing here rounds a value in silence.

use ethnum::I256;

/// Picos: 10^-12 of a pricing unit.
pub type Picos = i128;
/// A quantity, price or ratio at 10^-18 (`SCALE`).
pub type Fixed = i128;

pub const SCALE_DIGITS: i32 = 18;
pub const SCALE: i128 = 1_000_000_000_000_000_000;
pub const PICOS_PER_UNIT: i128 = 1_000_000_000_000;
/// SCALE / PICOS_PER_UNIT: a fixed value over this is picos.
pub const FIXED_PER_PICO: i128 = 1_000_000;
/// The largest value one event may carry (exclusive), in units: 10^15.
pub const USAGE_VALUE_MAX: f64 = 1e15;

/// numerator / denominator rounded half-even to an integer; None when it does not fit an i128.
pub fn round_half_even(numerator: I256, denominator: I256) -> Option<i128> {
    debug_assert!(denominator > I256::ZERO, "denominators are positive");
    // The common case fits 128 bits, where division is several times cheaper.
    if let (Ok(n), Ok(d)) = (i128::try_from(numerator), i128::try_from(denominator)) {
        return round_half_even_128(n, d);
    }
    let quotient = numerator.div_euclid(denominator);
    let remainder = numerator.rem_euclid(denominator);
    let twice = remainder.checked_mul(I256::new(2))?;
    let odd = quotient & I256::ONE == I256::ONE;
    let rounded =
        if twice > denominator || (twice == denominator && odd) { quotient.checked_add(I256::ONE)? } else { quotient };
    i128::try_from(rounded).ok()
}

/// `a.checked_mul(b)`, cheaper when a >= 0 and 0 <= b < 2^64 (a quantity times a reduced price
/// coefficient): two 64-by-64 products, where the general signed 128-bit product with its overflow
/// check is a long sequence of them.
#[inline]
pub fn checked_mul_128(a: i128, b: i128) -> Option<i128> {
    let (Ok(a_wide), Ok(b_word)) = (u128::try_from(a), u64::try_from(b)) else { return a.checked_mul(b) };
    let b_wide = u128::from(b_word);
    let low = u128::from(a_wide as u64) * b_wide;
    let high = (a_wide >> 64) * b_wide; // a < 2^127 and b < 2^64: cannot overflow
    if high >> 63 != 0 {
        return None; // high x 2^64 alone passes i128::MAX
    }
    i128::try_from((high << 64).checked_add(low)?).ok()
}

/// `round_half_even` in 128 bits (denominator > 0), with one division.
pub fn round_half_even_128(numerator: i128, denominator: i128) -> Option<i128> {
    let (mut quotient, mut remainder) = divide(numerator, denominator);
    if remainder < 0 {
        quotient -= 1;
        remainder += denominator;
    }
    let twice = remainder.checked_mul(2)?;
    if twice > denominator || (twice == denominator && quotient & 1 == 1) {
        quotient.checked_add(1)
    } else {
        Some(quotient)
    }
}

/// numerator / denominator (> 0) truncated, and its remainder. A price's denominator fits 64 bits and so does
/// its quotient: one 128-by-64 division then, instead of the compiler's general 128-bit one (`__divti3`).
fn divide(numerator: i128, denominator: i128) -> (i128, i128) {
    if let (Ok(n), Ok(d)) = (u128::try_from(numerator), u64::try_from(denominator)) {
        if let Some((quotient, remainder)) = divide_128_by_64(n, d) {
            return (quotient.into(), remainder.into());
        }
    }
    let quotient = numerator / denominator;
    (quotient, numerator - quotient * denominator)
}

/// n / d and n % d when the quotient fits 64 bits (n's high half below d); None otherwise.
#[cfg(target_arch = "x86_64")]
fn divide_128_by_64(n: u128, d: u64) -> Option<(u64, u64)> {
    let (high, low) = ((n >> 64) as u64, n as u64);
    if high >= d {
        return None;
    }
    let (quotient, remainder): (u64, u64);
    // SAFETY: `div` divides rdx:rax by d, faulting only when d is 0 or the quotient overflows 64 bits; high < d
    // rules out both. It touches no memory and no flags anyone reads.
    unsafe {
        std::arch::asm!(
            "div {d}",
            d = in(reg) d,
            inout("rax") low => quotient,
            inout("rdx") high => remainder,
            options(pure, nomem, nostack),
        );
    }
    Some((quotient, remainder))
}

#[cfg(not(target_arch = "x86_64"))]
fn divide_128_by_64(n: u128, d: u64) -> Option<(u64, u64)> {
    u64::try_from(n / u128::from(d)).ok().map(|quotient| (quotient, (n % u128::from(d)) as u64))
}

/// A wire double as an exact quantity at 10^-18, from its shortest round-trip decimal text
/// (0.1 -> 100_000_000_000_000_000). None when that text has more than 18 decimal places.
pub fn fixed_from_f64(value: f64) -> Option<Fixed> {
    debug_assert!(value.is_finite() && value >= 0.0, "callers check range first");
    if value < USAGE_VALUE_MAX {
        // Token counts: exact, without formatting the double. Under 10^15 a value converts to i64 exactly
        // when it is whole (the compiler's f64 -> i128 conversion and fract() were two calls an event value).
        let whole = value as i64;
        if whole as f64 == value {
            return Some(i128::from(whole) * SCALE);
        }
    }
    if let Some(quantity) = few_decimals(value) {
        return Some(quantity);
    }
    from_shortest_text(value)
}

/// The largest number of decimal places `few_decimals` tries.
const FEW_DECIMALS_MAX: i32 = 9;

/// 10^i for i up to SCALE_DIGITS (a table: `10i128.pow(i)` was a loop of 128-bit products per value).
const POW10: [i128; SCALE_DIGITS as usize + 1] = {
    let mut powers = [1i128; SCALE_DIGITS as usize + 1];
    let mut i = 1;
    while i < powers.len() {
        powers[i] = powers[i - 1] * 10;
        i += 1;
    }
    powers
};

/// `fixed_from_f64` without formatting, for a value whose shortest text has at most
/// FEW_DECIMALS_MAX decimal places (0.5, 12.25): for d = 1, 2, ... the one d-place decimal m / 10^d
/// nearest the value, if it parses back to the value. None when unsure (the caller formats).
///
/// Why it is the shortest text's value: a decimal round-trips when it lies in the value's rounding
/// interval, narrower than `spacing` (the gap to the next double up). While spacing x 10^d <= 1/2,
/// at most one d-place decimal lies in it, within 1/4 of value x 10^d, and the product (exact to
/// 2^-13 below 2^40) rounds to it. So the first d that finds a decimal has the fewest digits, and
/// that decimal is the only one with so few: what the shortest round-trip text reads.
fn few_decimals(value: f64) -> Option<Fixed> {
    let spacing = f64::from_bits(value.to_bits() + 1) - value;
    let mut scale = 1.0f64;
    for d in 1..=FEW_DECIMALS_MAX {
        scale *= 10.0; // exact: 10^d < 2^53
        let product = value * scale;
        // Exact: spacing is a power of two.
        if spacing * scale > 0.5 || product >= (1u64 << 40) as f64 {
            return None;
        }
        // product.round() (halves away from zero; product >= 0) without a libm call: product < 2^40
        // converts to i64 exactly, and its fraction, product - whole, is exact.
        let whole = product as i64;
        let m = whole + i64::from(product - whole as f64 >= 0.5);
        // m and 10^d are exact doubles, so the division rounds once, exactly as parsing the text.
        if m as f64 / scale == value {
            return Some(i128::from(m) * POW10[(SCALE_DIGITS - d) as usize]);
        }
    }
    None
}

/// `fixed_from_f64` by reading the value's shortest round-trip text.
fn from_shortest_text(value: f64) -> Option<Fixed> {
    let (mantissa, digits, exponent) = shortest(value);
    // value = mantissa x 10^(exponent - digits + 1); at 10^-18 that is mantissa x 10^shift.
    let shift = exponent - (digits as i32 - 1) + SCALE_DIGITS;
    if shift >= 0 {
        (mantissa as i128).checked_mul(10i128.checked_pow(shift as u32)?)
    } else {
        None
    }
}

/// The shortest round-trip digits of a positive double as an integer, how many there are, and
/// the decimal exponent of the first; formatted on the stack, so no allocation per value.
fn shortest(value: f64) -> (u64, u32, i32) {
    use std::io::Write;
    let mut buffer = [0u8; 40];
    let mut cursor = std::io::Cursor::new(&mut buffer[..]);
    // Rust's `{:e}` prints the shortest round-trip form, like Python's repr: "1.5e-7".
    write!(cursor, "{value:e}").expect("a double's {:e} fits 40 bytes");
    let written = cursor.position() as usize;
    let text = &buffer[..written];
    let mut parts = text.split(|b| *b == b'e');
    let (mut mantissa, mut digits) = (0u64, 0u32);
    for &b in parts.next().expect("a mantissa") {
        if b.is_ascii_digit() {
            mantissa = mantissa * 10 + u64::from(b - b'0'); // at most 17 digits: fits a u64
            digits += 1;
        }
    }
    let exponent = std::str::from_utf8(parts.next().expect("{:e} always has an exponent"))
        .ok()
        .and_then(|e| e.parse().ok())
        .expect("an integer exponent");
    (mantissa, digits, exponent)
}

/// The shortest digits that round-trip `value` and the decimal exponent of the first digit.
fn shortest_digits(value: f64) -> (String, i32) {
    let (mantissa, _, exponent) = shortest(value);
    (mantissa.to_string(), exponent)
}

/// A double as Python's `repr` writes it ("1.0", "1e-50", "1e+16", "inf", "nan"), so that
/// the kernel's reject messages read exactly as the Python engine's.
pub fn python_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if value == 0.0 {
        return if value.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sign = if value < 0.0 { "-" } else { "" };
    let (digits, exponent) = shortest_digits(value.abs());
    if !(-4..16).contains(&exponent) {
        let (head, tail) = digits.split_at(1);
        let fraction = if tail.is_empty() { String::new() } else { format!(".{tail}") };
        let exp_sign = if exponent < 0 { "-" } else { "+" };
        return format!("{sign}{head}{fraction}e{exp_sign}{:02}", exponent.abs());
    }
    let point = exponent + 1; // digits before the decimal point
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        let (whole, fraction) = digits.split_at(point as usize);
        format!("{whole}.{fraction}")
    };
    format!("{sign}{body}")
}

/// Parses a decimal integer text (how tables carry values wider than 64 bits).
pub fn parse_i128(text: &str) -> Result<i128, String> {
    text.parse::<i128>().map_err(|_| format!("{text:?} is not an integer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_convert_through_their_shortest_text() {
        assert_eq!(fixed_from_f64(0.1), Some(SCALE / 10));
        assert_eq!(fixed_from_f64(1.0), Some(SCALE));
        assert_eq!(fixed_from_f64(123.456), Some(123_456 * SCALE / 1000));
        assert_eq!(fixed_from_f64(1e14), Some(100_000_000_000_000 * SCALE));
        assert_eq!(fixed_from_f64(1e-18), Some(1));
        assert_eq!(fixed_from_f64(999999999999999.9), Some(9_999_999_999_999_999 * SCALE / 10));
    }

    #[test]
    fn few_decimals_are_read_without_formatting() {
        assert_eq!(few_decimals(0.5), Some(SCALE / 2));
        assert_eq!(few_decimals(300.25), Some(300_250 * SCALE / 1000));
        assert_eq!(few_decimals(0.1), Some(SCALE / 10));
        assert_eq!(few_decimals(1e-7), Some(100_000_000_000));
        assert_eq!(few_decimals(1e-12), None); // more places than it tries: the text decides
        assert_eq!(few_decimals(0.1 + 0.2), None); // 0.30000000000000004
    }

    #[test]
    fn doubles_finer_than_the_scale_are_refused() {
        assert_eq!(fixed_from_f64(1e-50), None);
        assert_eq!(fixed_from_f64(1e-19), None);
        assert_eq!(fixed_from_f64(1.5e-18), None);
    }

    #[test]
    fn repr_matches_python() {
        for (value, text) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-50, "1e-50"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (-1.0, "-1.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123.5, "123.5"),
            (1.5e300, "1.5e+300"),
        ] {
            assert_eq!(python_repr(value), text);
        }
    }

    #[test]
    fn division_at_the_edges_of_64_bit_quotients() {
        let max = i128::from(u64::MAX);
        let d = 1i128 << 62; // quotients of n below d << 64 fit 64 bits
        for (n, d) in
            [(0, 1), (max, 1), (max + 1, 1), (i128::MAX, max), (((d - 1) << 64) | max, d), (d << 64, d), (-7, 2)]
        {
            assert_eq!(divide(n, d), (n / d, n % d), "{n} / {d}");
        }
    }

    #[test]
    fn rounding_is_half_even() {
        let r = |n: i64, d: i64| round_half_even(I256::new(n.into()), I256::new(d.into()));
        assert_eq!(r(5, 2), Some(2));
        assert_eq!(r(7, 2), Some(4));
        assert_eq!(r(-5, 2), Some(-2));
        assert_eq!(r(-7, 2), Some(-4));
        assert_eq!(r(10, 3), Some(3));
        assert_eq!(r(11, 3), Some(4));
    }

    proptest! {
        #![proptest_config(crate::test_config())]
        #[test]
        fn every_double_converted_is_exact(mantissa in 0u64..1_000_000_000_000_000, exponent in -40i32..=0) {
            let value = mantissa as f64 * 10f64.powi(exponent); // below 10^15 by construction
            if let Some(fixed) = fixed_from_f64(value) {
                // The fixed value reads back as the same double: nothing was rounded.
                let text = format!("{}e-18", fixed);
                prop_assert_eq!(text.parse::<f64>().unwrap(), value);
            }
        }

        #[test]
        fn conversion_reads_as_the_shortest_text(whole in 0u64..1_000_000_000_000_000, bits in 0u64..0x4330_0000_0000_0000) {
            // Whole values (the fast path) and doubles of any bit pattern below 2^52, whole or not.
            for value in [whole as f64, f64::from_bits(bits), f64::from_bits(bits).trunc()] {
                prop_assert_eq!(fixed_from_f64(value), from_shortest_text(value), "{:e}", value);
            }
        }

        #[test]
        fn few_decimals_reads_as_the_shortest_text(
            m in 0u64..(1u64 << 41),
            d in 0u32..12,
            bits in 0u64..0x4330_0000_0000_0000,
            nudge in -2i64..=2,
        ) {
            // Decimals with few places, their neighbouring doubles, and doubles of any bit pattern.
            let decimal: f64 = format!("{m}e-{d}").parse().unwrap();
            let neighbour = f64::from_bits((decimal.to_bits() as i64 + nudge).max(0) as u64);
            for value in [decimal, neighbour, f64::from_bits(bits)] {
                if let Some(fast) = few_decimals(value) {
                    prop_assert_eq!(Some(fast), from_shortest_text(value), "{:e}", value);
                }
            }
        }

        #[test]
        fn products_match_checked_multiplication(a in any::<i128>(), b in any::<i128>(), shift in 0u32..128, word in any::<u64>()) {
            // Any operands, and the fast path's (a >= 0, b a word) near the overflow boundary.
            let near = (a >> shift).checked_abs().unwrap_or(i128::MAX);
            let positive = a.checked_abs().unwrap_or(i128::MAX);
            for (a, b) in [(a, b), (near, i128::from(word)), (positive, i128::from(word >> (shift % 64)))] {
                prop_assert_eq!(checked_mul_128(a, b), a.checked_mul(b), "{} x {}", a, b);
            }
        }

        #[test]
        fn division_matches_128_bit_division(n in any::<i128>(), d in 1u64.., wide in 1i128.., shift in 0u32..64) {
            // Quotients that fit 64 bits (n's high half below d) and ones that do not; divisors past 64 bits.
            let near = (n >> shift) as u128 % (u128::from(d) << 64);
            for (n, d) in [(n, i128::from(d)), (near as i128, i128::from(d)), (n, wide)] {
                prop_assert_eq!(divide(n, d), (n / d, n % d), "{} / {}", n, d);
            }
        }

        #[test]
        fn rounding_is_within_half(n in any::<i64>(), d in 1i64..1_000_000) {
            let rounded = round_half_even(I256::new(n.into()), I256::new(d.into())).unwrap();
            let error = (I256::new(rounded) * I256::new(d.into()) - I256::new(n.into())).abs();
            prop_assert!(error * I256::new(2) <= I256::new(d.into()));
        }
    }
}
