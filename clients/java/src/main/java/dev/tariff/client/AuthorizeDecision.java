/* The answer of TariffClient.authorize: the server's decision, or (degraded) the caller's fallback policy. */
package dev.tariff.client;

import dev.tariff.v1.AuthorizeRequest;
import dev.tariff.v1.AuthorizeResponse;
import io.grpc.Status;

/**
 * @param reason OK, OVERAGE_ALLOWED, INSUFFICIENT_CREDIT, NO_ACTIVE_CONTRACT, ... or UNAVAILABLE when degraded
 * @param estimatedCost decimal string in the rate card's pricing unit ("" when degraded)
 * @param creditsAvailable decimal string ("" when degraded)
 * @param reservationId with reserve, the hold's id: the server's answer or, when degraded, the request's (the hold
 *     may have been made)
 * @param degraded true when the server was not reached and the UnavailablePolicy decided
 */
public record AuthorizeDecision(
    String requestId,
    boolean allowed,
    String reason,
    String estimatedCost,
    String creditsAvailable,
    String reservationId,
    String message,
    boolean degraded) {

  static AuthorizeDecision of(AuthorizeResponse response, String requestId) {
    return new AuthorizeDecision(
        response.getRequestId().isEmpty() ? requestId : response.getRequestId(),
        response.getAllowed(),
        response.getReason(),
        response.getEstimatedCost(),
        response.getCreditsAvailable(),
        response.getReservationId(),
        response.getMessage(),
        false);
  }

  static AuthorizeDecision degraded(AuthorizeRequest request, AuthorizeOptions.UnavailablePolicy policy, Status status) {
    String message = "Tariff server not reached (" + status.getCode() + ": " + status.getDescription() + "); policy: " + policy;
    return new AuthorizeDecision(request.getRequestId(), policy == AuthorizeOptions.UnavailablePolicy.ALLOW, "UNAVAILABLE",
        "", "", request.getReservationId(), message, true);
  }
}
