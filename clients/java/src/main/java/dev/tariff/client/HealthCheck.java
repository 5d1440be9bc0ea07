/*
 * grpc.health.v1.Health/Check for TariffClient.waitReady, spoken in raw bytes: the client generates its code from
 * proto/ only, and the two messages are one field each (HealthCheckRequest{string service = 1}, sent empty for the
 * whole server; HealthCheckResponse{ServingStatus status = 1}).
 */
package dev.tariff.client;

import com.google.protobuf.CodedInputStream;
import io.grpc.MethodDescriptor;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;

final class HealthCheck {
  static final int SERVING = 1;

  private static final MethodDescriptor.Marshaller<byte[]> BYTES =
      new MethodDescriptor.Marshaller<>() {
        @Override
        public InputStream stream(byte[] value) {
          return new ByteArrayInputStream(value);
        }

        @Override
        public byte[] parse(InputStream stream) {
          try {
            return stream.readAllBytes();
          } catch (IOException e) {
            throw new UncheckedIOException(e);
          }
        }
      };

  static final MethodDescriptor<byte[], byte[]> METHOD =
      MethodDescriptor.<byte[], byte[]>newBuilder()
          .setType(MethodDescriptor.MethodType.UNARY)
          .setFullMethodName("grpc.health.v1.Health/Check")
          .setRequestMarshaller(BYTES)
          .setResponseMarshaller(BYTES)
          .build();

  private HealthCheck() {}

  /** The status field of a HealthCheckResponse (0, UNKNOWN, when absent). */
  static int status(byte[] response) {
    try {
      CodedInputStream input = CodedInputStream.newInstance(response);
      int status = 0;
      for (int tag = input.readTag(); tag != 0; tag = input.readTag()) {
        if (tag == (1 << 3)) { // field 1, varint
          status = input.readEnum();
        } else if (!input.skipField(tag)) {
          break;
        }
      }
      return status;
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }
}
