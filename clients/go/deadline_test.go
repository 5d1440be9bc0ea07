// The client's Timeout is the deadline of every unary call whose context has none, the generated
// clients' included (as the Python client's default_timeout_s): a server that never answers a
// CreateCustomer must not hang the caller for ever.

package tariff_test

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tariff "github.com/tariff/tariff/clients/go"
	tariffv1 "github.com/tariff/tariff/clients/go/gen/tariff/v1"
)

// startSilentServer serves gRPC on a loopback port and answers no call until the caller gives up.
func startSilentServer(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	silent := grpc.NewServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		<-stream.Context().Done()
		return stream.Context().Err()
	}))
	go func() { _ = silent.Serve(listener) }()
	t.Cleanup(silent.Stop)
	return listener.Addr().String()
}

func TestTimeoutBoundsGeneratedUnaryCalls(t *testing.T) {
	client := newClient(t, startSilentServer(t), tariff.Options{Timeout: 300 * time.Millisecond})
	failed := make(chan error, 1)
	go func() {
		_, err := client.Contracts.CreateCustomer(context.Background(), &tariffv1.CreateCustomerRequest{Id: "acme-2"})
		failed <- err
	}()
	select {
	case err := <-failed:
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("CreateCustomer on a silent server: %v, want DEADLINE_EXCEEDED from the client's Timeout", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("CreateCustomer without a deadline of its own still waits on a silent server: the client's Timeout was not applied")
	}
	// A caller's own deadline wins over the default.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := client.Pricing.ListRateCards(ctx, &tariffv1.ListRateCardsRequest{}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("ListRateCards with the caller's deadline: %v, want DEADLINE_EXCEEDED", err)
	}
}
