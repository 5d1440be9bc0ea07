/**
 * Public entry point of the Tariff TypeScript client: the hand-written layer (TariffClient,
 * UsageSender) plus every generated message, enum and service of tariff.v1 (from src/gen/).
 */

export { Code, ConnectError } from "@connectrpc/connect";
export { create, fromBinary, toBinary } from "@bufbuild/protobuf";

export { REPLY_BYTES_MAX, TariffClient, type TariffClientOptions, type TlsOptions } from "./client.js";
export { fieldViolations, type FieldViolation } from "./errors.js";
export {
  AuthorizeError,
  AuthorizeStreamer,
  newRequestId,
  type AuthorizeDecision,
  type AuthorizeInput,
  type AuthorizeOptions,
  type AuthorizeStreamerOptions,
  type UnavailablePolicy,
} from "./authorize.js";
export {
  DEFAULT_RETRY_POLICY,
  UsageSender,
  type RetryPolicy,
  type Usage,
  type UsageSenderOptions,
  type UsageSenderStats,
} from "./usage-sender.js";

export * from "./gen/tariff/v1/alerts_pb.js";
export * from "./gen/tariff/v1/balance_pb.js";
export * from "./gen/tariff/v1/contracts_pb.js";
export * from "./gen/tariff/v1/invoices_pb.js";
export * from "./gen/tariff/v1/pricing_pb.js";
export * from "./gen/tariff/v1/usage_pb.js";
export * from "./gen/grpc/health/v1/health_pb.js";
