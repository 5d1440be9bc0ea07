/* The exception a failed TariffClient.authorize throws: the call's status, and the ids the request carried. */
package dev.tariff.client;

import dev.tariff.v1.AuthorizeRequest;
import io.grpc.StatusRuntimeException;

/**
 * A StatusRuntimeException (status, trailers and StatusProto.fromThrowable as usual) that also names the request's
 * ids. With reserve, {@link #reservationId()} is the id the hold may go by (the server may have made it before the
 * deadline ran out): retry with it and the server holds once; a usage event settles the hold by it.
 */
public final class AuthorizeException extends StatusRuntimeException {
  private static final long serialVersionUID = 1L;

  private final String requestId;
  private final String reservationId;

  AuthorizeException(StatusRuntimeException failure, AuthorizeRequest request) {
    super(failure.getStatus(), failure.getTrailers());
    this.requestId = request.getRequestId();
    this.reservationId = request.getReservationId();
  }

  /** The request's id (the client's choice when the request had none). */
  public String requestId() {
    return requestId;
  }

  /** The request's reservation id, the client's choice for a reserve request without one ("" without reserve). */
  public String reservationId() {
    return reservationId;
  }
}
