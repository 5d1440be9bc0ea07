/**
 * What the server says about a failed call beyond its status code: the field violations of an
 * INVALID_ARGUMENT (google.rpc.BadRequest in the rich status). The package generates no google.rpc
 * types, so the detail is read by hand, as serverRetryDelayMs reads RetryInfo (usage-sender.ts).
 */

import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { ConnectError } from "@connectrpc/connect";

/** One google.rpc.BadRequest.FieldViolation: the request field at fault (a path such as `override.match.model`) and why. */
export interface FieldViolation {
  field: string;
  description: string;
  /** The violation's machine-readable reason, when the server gives one ("" otherwise). */
  reason: string;
}

/**
 * The field violations of the error's google.rpc.BadRequest detail, in the server's order; empty when the error
 * carries none (any status but INVALID_ARGUMENT, or an error that never reached the server).
 *
 *     catch (e) { for (const v of fieldViolations(e)) console.log(v.field, v.description); }
 */
export function fieldViolations(error: unknown): FieldViolation[] {
  const violations: FieldViolation[] = [];
  for (const detail of ConnectError.from(error).details) {
    if ("desc" in detail || detail.type !== "google.rpc.BadRequest") {
      continue;
    }
    // BadRequest is `{ repeated FieldViolation field_violations = 1; }`.
    const reader = new BinaryReader(detail.value);
    while (reader.pos < reader.len) {
      const [field, wireType] = reader.tag();
      if (field === 1 && wireType === WireType.LengthDelimited) {
        violations.push(readFieldViolation(reader.bytes()));
      } else {
        reader.skip(wireType, field);
      }
    }
  }
  return violations;
}

/** FieldViolation is `{ string field = 1; string description = 2; string reason = 3; ... }`. */
function readFieldViolation(bytes: Uint8Array): FieldViolation {
  const violation: FieldViolation = { field: "", description: "", reason: "" };
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (wireType === WireType.LengthDelimited && field === 1) {
      violation.field = reader.string();
    } else if (wireType === WireType.LengthDelimited && field === 2) {
      violation.description = reader.string();
    } else if (wireType === WireType.LengthDelimited && field === 3) {
      violation.reason = reader.string();
    } else {
      reader.skip(wireType, field);
    }
  }
  return violation;
}
