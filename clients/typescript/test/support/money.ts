/**
 * Exact decimal arithmetic for test assertions: amounts on the wire are decimal strings, and the
 * tests compare them as integers of micro-units (never as binary floats).
 */

const SCALE_DIGITS = 6;
const SCALE = 10n ** BigInt(SCALE_DIGITS);

/** "49995.5" -> 49995500000n. Refuses anything that is not a plain decimal of at most 6 places. */
export function micros(text: string): bigint {
  const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text);
  if (match === null) {
    throw new Error(`not a decimal: ${JSON.stringify(text)}`);
  }
  const [, sign, whole = "0", fraction = ""] = match;
  if (fraction.length > SCALE_DIGITS) {
    throw new Error(`more than ${SCALE_DIGITS} decimal places: ${text}`);
  }
  const value = BigInt(whole) * SCALE + BigInt(fraction.padEnd(SCALE_DIGITS, "0"));
  return sign === "-" ? -value : value;
}
