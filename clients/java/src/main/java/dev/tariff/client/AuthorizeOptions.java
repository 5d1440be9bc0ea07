/* Per-call options of TariffClient.authorize: its deadline and what to answer when the server is not reached. */
package dev.tariff.client;

import java.time.Duration;

/**
 * @param timeout deadline of this decision (null: the client's); gateways use a short one. An earlier deadline of the
 *     caller's gRPC Context ends the call first, and authorize then throws whatever the policy
 * @param onUnavailable what to answer when the server is not reached in time
 */
public record AuthorizeOptions(Duration timeout, UnavailablePolicy onUnavailable) {
  /** What authorize answers when the server cannot be reached (UNAVAILABLE or DEADLINE_EXCEEDED). */
  public enum UnavailablePolicy {
    /** Throw the StatusRuntimeException. */
    THROW,
    /** Fail open: allowed, degraded, reason UNAVAILABLE. */
    ALLOW,
    /** Fail closed: denied, degraded, reason UNAVAILABLE. */
    DENY
  }

  public AuthorizeOptions {
    if (onUnavailable == null) {
      onUnavailable = UnavailablePolicy.THROW;
    }
  }

  public static AuthorizeOptions defaults() {
    return new AuthorizeOptions(null, UnavailablePolicy.THROW);
  }
}
