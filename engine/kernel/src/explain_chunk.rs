//! The explain index's chunk layouts: how an event part (explain.rs's layout) is packed into a chunk, and unpacked
//! back for a page (explain_block.rs sorts, cuts and keys the chunks).
//!
//! Layout 1 (the blocks an index held before server/explain_index.py's `chunks-2-from`; read, no longer written):
//! (line key 16 bytes | varint size | part)*, the part explain.rs's with every length and count a LEB128 varint and
//! every integer a zigzag varint.
//!
//! Layout 2: zigzag base (the timestamp of the block's first record) | (flags u8 | line key 16 bytes unless
//! SAME_LINE | varint size of the body | body)*, where body = varint transaction id length | its bytes | zigzag
//! (timestamp - base) | varint version | zigzag quantity (in whole units, 10^18, under WHOLE_UNITS) | zigzag amount
//! / 10^(flags >> 4) | zigzag overage unless NO_OVERAGE | draws; draws = under ONE_WHOLE_DRAW one varint grant index
//! (one draw of the whole amount), else varint count | (varint grant index | zigzag credits)*. A grant index names a
//! grant id in the table of the block's entry for the part's (customer, period): varint line count | that many
//! 2-byte line key prefixes | varint grant count | (varint length | grant id)*. Measured on bench records (README),
//! the line key, the grant id and the whole quantity were half of a layout-1 part, the grant id 21 of its 84 bytes.

use crate::explain::Reader;

/// The part's line is the previous part's (its key is left out); never on a chunk's first part.
pub(crate) const SAME_LINE: u8 = 1;
/// The quantity is written in whole units (it is a multiple of 10^18).
const WHOLE_UNITS: u8 = 2;
/// The overage is zero (and left out).
const NO_OVERAGE: u8 = 4;
/// One draw, of the whole amount: only its grant index is written.
const ONE_WHOLE_DRAW: u8 = 8;
/// The amount's trailing decimal zeros stripped, at most 15, counted in the flags' high four bits.
const AMOUNT_EXPONENT_SHIFT: u32 = 4;
const AMOUNT_EXPONENT_MAX: u32 = 15;

/// The quantity scale: explain.rs's quantities are in 10^-18 units.
const UNIT: i128 = 1_000_000_000_000_000_000;
const FIVE_POW_18: i128 = 3_814_697_265_625;

/// The inverse of an odd `divisor` modulo 2^128: each step of Newton's iteration doubles its right low bits,
/// from 3 (an odd number is its own inverse modulo 8).
const fn inverse(divisor: u128) -> u128 {
    let mut inverse = divisor;
    let mut step = 0;
    while step < 6 {
        inverse = inverse.wrapping_mul(2u128.wrapping_sub(divisor.wrapping_mul(inverse)));
        step += 1;
    }
    inverse
}

const FIVE_POW_18_INVERSE: u128 = inverse(FIVE_POW_18 as u128);

/// `value / divisor` when the odd `divisor` divides it, else None. A multiplication by the divisor's inverse modulo
/// 2^128 instead of a 128-bit division (a call of some hundred instructions): the product times the divisor is
/// `value` modulo 2^128, and within these bounds it does not overflow, so it is `value` exactly.
#[inline(always)]
fn exact_quotient(value: i128, divisor: i128, inverse: u128) -> Option<i128> {
    let quotient = (value as u128).wrapping_mul(inverse) as i128;
    (i128::MIN / divisor..=i128::MAX / divisor).contains(&quotient).then_some(quotient)
}

/// The quantity in whole units, when it is a multiple of 10^18 = 2^18 * 5^18.
#[inline(always)]
fn whole_units(quantity: i128) -> Option<i128> {
    if quantity & ((1 << 18) - 1) != 0 {
        return None;
    }
    exact_quotient(quantity >> 18, FIVE_POW_18, FIVE_POW_18_INVERSE)
}

/// The amount without its trailing decimal zeros (at most AMOUNT_EXPONENT_MAX of them), and how many were stripped:
/// 10^8, 10^4, 10^2 and 10 tried in turn (each taken if it divides what is left) strip min(zeros, 15) of them in
/// four steps instead of one step a zero.
#[inline(always)]
fn decimal_mantissa(amount: i128) -> (i128, u32) {
    const STEPS: [(u32, i128, u128); 4] = [
        (8, 390_625, inverse(390_625)), // 5^8
        (4, 625, inverse(625)),
        (2, 25, inverse(25)),
        (1, 5, inverse(5)),
    ];
    const _: () = assert!(8 + 4 + 2 + 1 == AMOUNT_EXPONENT_MAX, "the steps strip up to the flags' four bits");
    if amount == 0 {
        return (0, 0);
    }
    // An amount of picos nearly always fits 64 bits, and a step on one register is a third of one on two: the
    // four steps on 128 bits were some 100 instructions a part.
    if let Ok(narrow) = i64::try_from(amount) {
        let (mantissa, exponent) = decimal_mantissa_64(narrow);
        return (mantissa.into(), exponent);
    }
    let (mut mantissa, mut exponent) = (amount, 0);
    for (zeros, five_pow, five_pow_inverse) in STEPS {
        if mantissa & ((1 << zeros) - 1) == 0 {
            if let Some(quotient) = exact_quotient(mantissa >> zeros, five_pow, five_pow_inverse) {
                mantissa = quotient;
                exponent += zeros;
            }
        }
    }
    (mantissa, exponent)
}

/// decimal_mantissa of an amount that fits 64 bits, by the same steps on 64-bit integers.
#[inline(always)]
fn decimal_mantissa_64(amount: i64) -> (i64, u32) {
    // An inverse modulo 2^128 is one modulo 2^64 once truncated.
    const STEPS: [(u32, i64, u64); 4] = [
        (8, 390_625, inverse(390_625) as u64),
        (4, 625, inverse(625) as u64),
        (2, 25, inverse(25) as u64),
        (1, 5, inverse(5) as u64),
    ];
    let (mut mantissa, mut exponent) = (amount, 0);
    for (zeros, five_pow, five_pow_inverse) in STEPS {
        if mantissa & ((1 << zeros) - 1) == 0 {
            // As exact_quotient, modulo 2^64: the quotient when five_pow divides, else a value out of the bounds.
            let quotient = ((mantissa >> zeros) as u64).wrapping_mul(five_pow_inverse) as i64;
            if (i64::MIN / five_pow..=i64::MAX / five_pow).contains(&quotient) {
                mantissa = quotient;
                exponent += zeros;
            }
        }
    }
    (mantissa, exponent)
}

/// The most bytes a varint takes: 128 bits, 7 a byte.
const VARINT_BYTES_MAX: usize = 19;

/// How many bytes put_varint writes for a u32 `size`.
pub(crate) fn size_varint_bytes(size: u32) -> usize {
    (32 - (size | 1).leading_zeros() as usize).div_ceil(7)
}

// Inlined, with put_zigzag: as calls, saving and restoring registers took some 24 of a varint's 55 instructions
// (a spread of the 7-bit groups in one 8-byte store instead of the loop measured no fewer once inlined).
#[inline(always)]
pub(crate) fn put_varint(out: &mut Vec<u8>, value: u128) {
    // Written into capacity reserved once instead of pushed byte by byte: each push checked the capacity,
    // and a part's dozen varints were a third of building a block.
    out.reserve(VARINT_BYTES_MAX);
    let spare = &mut out.spare_capacity_mut()[..VARINT_BYTES_MAX];
    let mut written = 0;
    // Most values fit 64 bits, and their loop runs on one register. A value past them (a quantity with a fraction
    // of a unit, some 71 bits) has its low nine groups written from its low 64 bits, then the rest on one register
    // too: a loop on the two registers of a u128 cost some 25 instructions a part.
    let mut narrow = match u64::try_from(value) {
        Ok(narrow) => narrow,
        Err(_) => {
            let low = value as u64;
            for (group, byte) in spare[..9].iter_mut().enumerate() {
                byte.write((low >> (7 * group)) as u8 | 0x80);
            }
            written = 9;
            let mut rest = value >> 63;
            while rest > u128::from(u64::MAX) {
                spare[written].write(rest as u8 | 0x80);
                rest >>= 7;
                written += 1;
            }
            rest as u64
        }
    };
    while narrow >= 0x80 {
        spare[written].write((narrow as u8) | 0x80);
        narrow >>= 7;
        written += 1;
    }
    spare[written].write(narrow as u8);
    let len = out.len() + written + 1;
    // SAFETY: the `written + 1` bytes past the length were initialized just above, within the capacity reserved.
    unsafe { out.set_len(len) };
}

#[inline(always)]
pub(crate) fn put_zigzag(out: &mut Vec<u8>, value: i128) {
    put_varint(out, ((value << 1) ^ (value >> 127)) as u128);
}

pub(crate) fn varint(reader: &mut Reader) -> Result<u128, String> {
    let mut value = 0u128;
    for shift in (0..128).step_by(7) {
        let byte = reader.take(1)?[0];
        value |= u128::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(format!("a varint runs past 128 bits at byte {}", reader.at))
}

pub(crate) fn zigzag(reader: &mut Reader) -> Result<i128, String> {
    let value = varint(reader)?;
    Ok(((value >> 1) as i128) ^ -((value & 1) as i128))
}

fn small(value: u128) -> Result<u32, String> {
    u32::try_from(value).map_err(|e| e.to_string())
}

#[inline(always)]
fn i128_at(reader: &mut Reader) -> Result<i128, String> {
    Ok(i128::from_le_bytes(reader.take(16)?.try_into().expect("16 bytes")))
}

/// A string field's bytes (u32 length first).
#[inline(always)]
pub(crate) fn sized<'a>(reader: &mut Reader<'a>) -> Result<&'a [u8], String> {
    let size = reader.u32()? as usize;
    reader.take(size)
}

/// An event part's fixed fields past its transaction id: timestamp i64, version u32, quantity, amount and overage
/// i128, draw count u32.
const PART_FIXED_BYTES: usize = 8 + 4 + 16 * 3 + 4;

/// Packs the event part at `reader` (explain.rs's layout) as a layout-2 flags byte and body (the chunk adds
/// SAME_LINE, the line key and the body's size), its timestamp from `base_ms`, each grant id as the index
/// `grant_index` gives it in the part's (customer, period) table.
#[inline(always)]
pub(crate) fn pack_part(
    reader: &mut Reader,
    out: &mut Vec<u8>,
    base_ms: i64,
    mut grant_index: impl FnMut(&[u8]) -> u32,
) -> Result<(), String> {
    let flags_at = out.len();
    out.push(0);
    let transaction_id = sized(reader)?; // the kernel's UTF-8, decoded by the page's reader
                                         // The fixed fields past the transaction id are taken at once: a take checks the bounds and carries a Result,
                                         // and six of them were about a sixth of packing a part.
    let fixed: &[u8; PART_FIXED_BYTES] = reader.take(PART_FIXED_BYTES)?.try_into().expect("the fixed fields");
    let field = |at: usize| -> [u8; 16] { fixed[at..at + 16].try_into().expect("16 bytes") };
    let timestamp_ms = i64::from_le_bytes(fixed[..8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
    let (quantity, amount, overage) =
        (i128::from_le_bytes(field(12)), i128::from_le_bytes(field(28)), i128::from_le_bytes(field(44)));
    let draws = u32::from_le_bytes(fixed[60..].try_into().expect("4 bytes"));
    put_varint(out, transaction_id.len() as u128);
    out.extend_from_slice(transaction_id);
    put_zigzag(out, i128::from(timestamp_ms) - i128::from(base_ms));
    put_varint(out, version.into());
    let mut flags = 0;
    match whole_units(quantity) {
        Some(units) => {
            flags |= WHOLE_UNITS;
            put_zigzag(out, units);
        }
        None => put_zigzag(out, quantity),
    }
    let (mantissa, exponent) = decimal_mantissa(amount);
    flags |= (exponent << AMOUNT_EXPONENT_SHIFT) as u8;
    put_zigzag(out, mantissa);
    match overage {
        0 => flags |= NO_OVERAGE,
        overage => put_zigzag(out, overage),
    }
    if draws == 1 {
        let grant = grant_index(sized(reader)?);
        let credits = i128_at(reader)?;
        if credits == amount {
            flags |= ONE_WHOLE_DRAW;
            put_varint(out, grant.into());
        } else {
            put_varint(out, 1);
            put_varint(out, grant.into());
            put_zigzag(out, credits);
        }
    } else {
        put_varint(out, draws.into());
        for _ in 0..draws {
            let grant = grant_index(sized(reader)?);
            put_varint(out, grant.into());
            put_zigzag(out, i128_at(reader)?);
        }
    }
    out[flags_at] = flags;
    Ok(())
}

fn put_text(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text);
}

/// A layout-2 body with its flags, appended to `out` in explain.rs's layout.
fn unpack_part(flags: u8, body: &mut Reader, base_ms: i64, grants: &[&[u8]], out: &mut Vec<u8>) -> Result<(), String> {
    let size = small(varint(body)?)?;
    put_text(out, body.take(size as usize)?);
    let timestamp_ms = i64::try_from(i128::from(base_ms) + zigzag(body)?).map_err(|e| e.to_string())?;
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&small(varint(body)?)?.to_le_bytes());
    let overflow = || "a packed value past 128 bits".to_string();
    let quantity = zigzag(body)?;
    let quantity = if flags & WHOLE_UNITS != 0 { quantity.checked_mul(UNIT).ok_or_else(overflow)? } else { quantity };
    let exponent = u32::from(flags) >> AMOUNT_EXPONENT_SHIFT;
    let amount = zigzag(body)?.checked_mul(10i128.pow(exponent)).ok_or_else(overflow)?;
    let overage = if flags & NO_OVERAGE != 0 { 0 } else { zigzag(body)? };
    for value in [quantity, amount, overage] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    let grant = |body: &mut Reader| -> Result<&[u8], String> {
        let index = varint(body)?;
        let found = usize::try_from(index).ok().and_then(|index| grants.get(index));
        found.copied().ok_or_else(|| format!("grant index {index} past the period's {} grants", grants.len()))
    };
    if flags & ONE_WHOLE_DRAW != 0 {
        out.extend_from_slice(&1u32.to_le_bytes());
        put_text(out, grant(body)?);
        out.extend_from_slice(&amount.to_le_bytes());
        return Ok(());
    }
    let draws = small(varint(body)?)?;
    out.extend_from_slice(&draws.to_le_bytes());
    for _ in 0..draws {
        put_text(out, grant(body)?);
        out.extend_from_slice(&zigzag(body)?.to_le_bytes());
    }
    Ok(())
}

/// The grant ids of a layout-2 (customer, period) entry's value, by index.
fn period_grants(period: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut reader = Reader { bytes: period, at: 0 };
    let lines = usize::try_from(varint(&mut reader)?).map_err(|e| e.to_string())?;
    reader.take(lines.checked_mul(2).ok_or("too many lines")?)?;
    let count = small(varint(&mut reader)?)?;
    let mut grants = Vec::with_capacity(count.min(1024) as usize);
    for _ in 0..count {
        let size = small(varint(&mut reader)?)?;
        grants.push(reader.take(size as usize)?);
    }
    Ok(grants)
}

/// The event parts of `line` in one chunk, concatenated in explain.rs's layout, how many there are, and whether the
/// chunk goes on past the line (so the line's parts in this block end here). `period`: for a layout-2 chunk, the
/// value of its block's entry for the line's (customer, period) (its grant ids); None for a layout-1 chunk.
pub fn chunk_line(chunk: &[u8], line: &[u8], period: Option<&[u8]>) -> Result<(Vec<u8>, u32, bool), String> {
    let Some(period) = period else { return chunk_line_1(chunk, line) };
    let grants = period_grants(period)?;
    let mut reader = Reader { bytes: chunk, at: 0 };
    let base_ms = i64::try_from(zigzag(&mut reader)?).map_err(|e| e.to_string())?;
    let mut found = Vec::new();
    let mut count = 0u32;
    let mut key: Option<&[u8]> = None;
    while reader.at < chunk.len() {
        let flags = reader.take(1)?[0];
        if flags & SAME_LINE == 0 {
            key = Some(reader.take(16)?);
        }
        let key = key.ok_or("a chunk's first part names no line")?;
        let size = usize::try_from(varint(&mut reader)?).map_err(|e| e.to_string())?;
        let packed = reader.take(size)?;
        match key.cmp(line) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                whole_part(packed, |body| unpack_part(flags, body, base_ms, &grants, &mut found))?;
                count += 1;
            }
            std::cmp::Ordering::Greater => return Ok((found, count, true)),
        }
    }
    Ok((found, count, false))
}

/// Unpacks one packed event part with `unpack` (either layout's), refusing bytes left past its end.
fn whole_part(packed: &[u8], unpack: impl FnOnce(&mut Reader) -> Result<(), String>) -> Result<(), String> {
    let mut part = Reader { bytes: packed, at: 0 };
    unpack(&mut part)?;
    if part.at != packed.len() {
        return Err(format!("a packed event part has {} bytes past its end", packed.len() - part.at));
    }
    Ok(())
}

/// chunk_line for a layout-1 chunk.
fn chunk_line_1(chunk: &[u8], line: &[u8]) -> Result<(Vec<u8>, u32, bool), String> {
    let mut reader = Reader { bytes: chunk, at: 0 };
    let mut found = Vec::new();
    let mut count = 0u32;
    while reader.at < chunk.len() {
        let key = reader.take(16)?;
        let size = usize::try_from(varint(&mut reader)?).map_err(|e| e.to_string())?;
        let packed = reader.take(size)?;
        match key.cmp(line) {
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                whole_part(packed, |part| unpack_part_1(part, &mut found))?;
                count += 1;
            }
            std::cmp::Ordering::Greater => return Ok((found, count, true)),
        }
    }
    Ok((found, count, false))
}

/// A layout-1 packed event part, appended to `out` in explain.rs's layout.
fn unpack_part_1(reader: &mut Reader, out: &mut Vec<u8>) -> Result<(), String> {
    fn text(reader: &mut Reader, out: &mut Vec<u8>) -> Result<(), String> {
        let size = small(varint(reader)?)?;
        put_text(out, reader.take(size as usize)?);
        Ok(())
    }
    text(reader, out)?;
    out.extend_from_slice(&i64::try_from(zigzag(reader)?).map_err(|e| e.to_string())?.to_le_bytes());
    out.extend_from_slice(&small(varint(reader)?)?.to_le_bytes());
    for _ in 0..3 {
        out.extend_from_slice(&zigzag(reader)?.to_le_bytes());
    }
    let draws = small(varint(reader)?)?;
    out.extend_from_slice(&draws.to_le_bytes());
    for _ in 0..draws {
        text(reader, out)?;
        out.extend_from_slice(&zigzag(reader)?.to_le_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varints_are_leb128_and_read_back() {
        let edges = [0, 1, 0x7f, 0x80, u128::from(u64::MAX), u128::from(u64::MAX) + 1, 1 << 70, u128::MAX];
        for value in edges.into_iter().chain((0..128).map(|bits| (1u128 << bits) - 1)) {
            // LEB128 by its definition: 7 bits a byte, low first, the high bit set on all but the last.
            let mut expected = Vec::new();
            let mut rest = value;
            loop {
                let low = (rest & 0x7f) as u8;
                rest >>= 7;
                expected.push(if rest == 0 { low } else { low | 0x80 });
                if rest == 0 {
                    break;
                }
            }
            let mut out = vec![9]; // appended after what is there
            put_varint(&mut out, value);
            assert_eq!(&out[1..], &expected[..], "{value}");
            if let Ok(size) = u32::try_from(value) {
                assert_eq!(size_varint_bytes(size), expected.len(), "{value}");
            }
            let mut reader = Reader { bytes: &out[1..], at: 0 };
            assert_eq!(varint(&mut reader), Ok(value));
            assert_eq!(reader.at, expected.len());
        }
    }

    /// An event part in explain.rs's layout.
    fn part(tx: &str, timestamp_ms: i64, version: u32, values: [i128; 3], draws: &[(&str, i128)]) -> Vec<u8> {
        let mut part = Vec::new();
        put_text(&mut part, tx.as_bytes());
        part.extend_from_slice(&timestamp_ms.to_le_bytes());
        part.extend_from_slice(&version.to_le_bytes());
        for value in values {
            part.extend_from_slice(&value.to_le_bytes());
        }
        part.extend_from_slice(&(draws.len() as u32).to_le_bytes());
        for (grant, credits) in draws {
            put_text(&mut part, grant.as_bytes());
            part.extend_from_slice(&credits.to_le_bytes());
        }
        part
    }

    /// Packs a part (grant ids indexed in a table of its own), then unpacks it; returns the packed bytes.
    fn round_trip(original: &[u8], base_ms: i64) -> Vec<u8> {
        let mut table: Vec<Vec<u8>> = Vec::new();
        let mut packed = Vec::new();
        pack_part(&mut Reader { bytes: original, at: 0 }, &mut packed, base_ms, |grant| {
            let found = table.iter().position(|known| known == grant);
            found.unwrap_or_else(|| {
                table.push(grant.to_vec());
                table.len() - 1
            }) as u32
        })
        .unwrap();
        let grants: Vec<&[u8]> = table.iter().map(Vec::as_slice).collect();
        let mut unpacked = Vec::new();
        let mut body = Reader { bytes: &packed[1..], at: 0 };
        unpack_part(packed[0], &mut body, base_ms, &grants, &mut unpacked).unwrap();
        assert_eq!(body.at, packed.len() - 1, "the body read to its end");
        assert_eq!(unpacked, original);
        packed
    }

    #[test]
    fn whole_quantities_and_decimal_amounts_are_found_by_inverses() {
        let edges_64 =
            [i64::MAX, i64::MIN, i64::MIN + 1, -9 * 10i64.pow(18), 9 * 10i64.pow(18), -(1 << 62), 5i64.pow(27)];
        for value in [0, 1, -1, 7, 10, -10, UNIT, -UNIT, 3 * UNIT + 1, i128::MAX, i128::MIN, i128::MIN + 1]
            .into_iter()
            .chain(edges_64.into_iter().flat_map(|edge| [edge.into(), i128::from(edge) + 1, i128::from(edge) * 10]))
            .chain((0..39).map(|e| 10i128.pow(e)))
            .chain((0..38).map(|e| -3 * 10i128.pow(e)))
        {
            let whole = (value % UNIT == 0).then_some(value / UNIT);
            assert_eq!(whole_units(value), whole, "{value}");
            let (mut mantissa, mut exponent) = (value, 0);
            while value != 0 && exponent < AMOUNT_EXPONENT_MAX && mantissa % 10 == 0 {
                mantissa /= 10;
                exponent += 1;
            }
            assert_eq!(decimal_mantissa(value), (mantissa, exponent), "{value}");
        }
    }

    #[test]
    fn the_flags_name_what_a_bench_part_leaves_out() {
        // 1,200 tokens, 0.0072 in picos drawn whole from one grant, no overage, at the base timestamp.
        let original = part("tx-1", 1_700_000_000_000, 1, [1200 * UNIT, 7_200_000_000, 0], &[("g-1", 7_200_000_000)]);
        let packed = round_trip(&original, 1_700_000_000_000);
        assert_eq!(packed[0], WHOLE_UNITS | NO_OVERAGE | ONE_WHOLE_DRAW | (8 << AMOUNT_EXPONENT_SHIFT));
        // flags | 4 "tx-1" | timestamp 0 | version 1 | 1,200 (zigzag 2,400: 2 bytes) | 72 (zigzag 144: 2) | grant 0
        assert_eq!(packed.len(), 1 + 5 + 1 + 1 + 2 + 2 + 1);
        // Not whole, an overage, a partial draw and a second grant: every field written.
        let original = part("t", 5, 2, [UNIT + 1, 11, 3], &[("g-1", 4), ("g-2", 7)]);
        let packed = round_trip(&original, 0);
        assert_eq!(packed[0], 0);
        let one_partial = part("t", 5, 2, [1, 11, 3], &[("g-1", 4)]);
        assert_eq!(round_trip(&one_partial, 0)[0], 0, "a draw of part of the amount is written out");
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-zé-]{1,12}"]
    }

    fn value() -> impl Strategy<Value = i128> {
        prop_oneof![
            any::<i128>(),
            (-10i128.pow(15)..10i128.pow(15)).prop_map(|units| units * UNIT),
            (any::<i64>(), 0u32..20).prop_map(|(m, e)| i128::from(m) * 10i128.pow(e)),
            Just(0),
        ]
    }

    proptest! {
        #[test]
        fn packed_parts_unpack_to_the_same_bytes(
            tx in text(),
            timestamp_ms in any::<i64>(),
            base_ms in prop_oneof![any::<i64>(), Just(0)],
            version in any::<u32>(),
            values in [value(), value(), value()],
            draws in prop::collection::vec((prop_oneof![Just("g".to_string()), text()], value()), 0..4),
            whole_draw in any::<bool>(),
        ) {
            let mut draws: Vec<(&str, i128)> = draws.iter().map(|(grant, credits)| (grant.as_str(), *credits)).collect();
            if whole_draw {
                draws.truncate(1);
                if let Some(draw) = draws.first_mut() {
                    draw.1 = values[1];
                }
            }
            round_trip(&part(&tx, timestamp_ms, version, values, &draws), base_ms);
        }
    }
}
