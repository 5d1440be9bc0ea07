// The UsageSender's stream handling against an in-process fake UsageService whose misbehaviour a
// real server does not offer on demand: a stream that never acks (the sender gives up on it after
// AckTimeout and resends the same batches on a new one), a stream ended with batches unacknowledged,
// an out-of-order ack, a non-retryable status (RESOURCE_EXHAUSTED without a RetryInfo among them),
// and a full buffer (Send waits while BufferEventsMax events are unacknowledged).

package tariff_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tariff "github.com/tariff/tariff/clients/go"
	tariffv1 "github.com/tariff/tariff/clients/go/gen/tariff/v1"
)

// errEndStream from an answer ends the stream with OK.
var errEndStream = errors.New("end the stream with OK")

// fakeUsage answers stream n (from 1) with answer(n, batch): an ack to send, nil for none, and an error to end
// the stream with (after the ack, when both are given).
type fakeUsage struct {
	tariffv1.UnimplementedUsageServiceServer
	answer func(stream int, batch *tariffv1.UsageBatch) (*tariffv1.IngestAck, error)

	mu       sync.Mutex
	received [][]*tariffv1.UsageBatch // per stream, in order
}

func (f *fakeUsage) IngestUsage(stream tariffv1.UsageService_IngestUsageServer) error {
	f.mu.Lock()
	f.received = append(f.received, nil)
	n := len(f.received)
	f.mu.Unlock()
	for {
		batch, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		f.mu.Lock()
		f.received[n-1] = append(f.received[n-1], batch)
		f.mu.Unlock()
		ack, err := f.answer(n, batch)
		if ack != nil { // sent before the error, if both are given
			if err := stream.Send(ack); err != nil {
				return err
			}
		}
		if errors.Is(err, errEndStream) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (f *fakeUsage) streams() [][]*tariffv1.UsageBatch {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]*tariffv1.UsageBatch(nil), f.received...)
}

func startFake(t *testing.T, fake *fakeUsage) *tariff.Client {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcServer := grpc.NewServer()
	tariffv1.RegisterUsageServiceServer(grpcServer, fake)
	go func() { _ = grpcServer.Serve(listener) }()
	t.Cleanup(grpcServer.Stop)
	return newClient(t, listener.Addr().String(), tariff.Options{})
}

func ackOf(batch *tariffv1.UsageBatch) *tariffv1.IngestAck {
	return &tariffv1.IngestAck{BatchId: batch.GetBatchId(), Accepted: uint32(len(batch.GetEvents()))}
}

func TestNoAckWithinAckTimeoutResendsTheSameBatchesOnANewStream(t *testing.T) {
	fake := &fakeUsage{answer: func(stream int, batch *tariffv1.UsageBatch) (*tariffv1.IngestAck, error) {
		if stream == 1 {
			return nil, nil // takes the batches, never acks
		}
		return ackOf(batch), nil
	}}
	client := startFake(t, fake)
	sender, err := client.NewUsageSender(tariff.SenderOptions{BatchEventsMax: 2, AckTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	started := time.Now()
	for i := range 4 {
		event, _ := demoEvent("ack-timeout", i, 1_700_000_000_000)
		if err := sender.Send(ctx, event); err != nil {
			t.Fatal(err)
		}
	}
	// Flush, not Close: a half-close would end the first stream (unacked batches and all) before the timeout.
	if err := sender.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(started); elapsed < 200*time.Millisecond {
		t.Fatalf("acked after %s: the first stream was given up before AckTimeout", elapsed)
	}
	stats, err := sender.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	streams := fake.streams()
	if len(streams) != 2 || len(streams[0]) != 2 || len(streams[1]) != 2 {
		t.Fatalf("batches per stream: %v", streams)
	}
	for i, batch := range streams[0] {
		if !proto.Equal(batch, streams[1][i]) {
			t.Fatalf("batch %d resent as %v, first written as %v", i, streams[1][i], batch)
		}
	}
	want := tariff.SenderStats{BatchesSent: 2, BatchesAcked: 2, EventsAccepted: 4, Reconnects: 1, ResentBatches: 2}
	if stats != want {
		t.Fatalf("stats = %+v, want %+v", stats, want)
	}
}

func TestAStreamEndedWithBatchesUnackedIsReplacedAndTheyAreResent(t *testing.T) {
	fake := &fakeUsage{answer: func(stream int, batch *tariffv1.UsageBatch) (*tariffv1.IngestAck, error) {
		if stream == 1 {
			return nil, errEndStream // status OK, the batch neither acked nor refused
		}
		return ackOf(batch), nil
	}}
	sender, err := startFake(t, fake).NewUsageSender(tariff.SenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	event, _ := demoEvent("ended", 0, 1_700_000_000_000)
	ack, err := sender.SendBatch(context.Background(), []*tariffv1.UsageEvent{event}, "b-1")
	if err != nil || ack.GetBatchId() != "b-1" || ack.GetAccepted() != 1 {
		t.Fatalf("SendBatch: %v, %v", ack, err)
	}
	stats, err := sender.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if streams := fake.streams(); len(streams) != 2 || !proto.Equal(streams[0][0], streams[1][0]) {
		t.Fatalf("streams: %v", streams)
	}
	if stats.Reconnects != 1 || stats.ResentBatches != 1 || stats.BatchesAcked != 1 {
		t.Fatalf("stats = %+v", stats)
	}
}

func TestAnAckOutOfOrderFailsTheSenderWithInternal(t *testing.T) {
	fake := &fakeUsage{answer: func(int, *tariffv1.UsageBatch) (*tariffv1.IngestAck, error) {
		return &tariffv1.IngestAck{BatchId: "someone-else"}, nil
	}}
	sender, err := startFake(t, fake).NewUsageSender(tariff.SenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	event, _ := demoEvent("out-of-order", 0, 1_700_000_000_000)
	if _, err := sender.SendBatch(context.Background(), []*tariffv1.UsageEvent{event}, "mine"); status.Code(err) != codes.Internal {
		t.Fatalf("SendBatch: %v, want INTERNAL", err)
	}
	if _, err := sender.Close(context.Background()); status.Code(err) != codes.Internal {
		t.Fatalf("Close: %v, want INTERNAL", err)
	}
}

func TestANonRetryableStatusFailsTheSenderWithoutARetry(t *testing.T) {
	fake := &fakeUsage{answer: func(int, *tariffv1.UsageBatch) (*tariffv1.IngestAck, error) {
		return nil, status.Error(codes.InvalidArgument, "batch_id: too long")
	}}
	sender, err := startFake(t, fake).NewUsageSender(tariff.SenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	event, _ := demoEvent("invalid", 0, 1_700_000_000_000)
	_, err = sender.SendBatch(context.Background(), []*tariffv1.UsageEvent{event}, "")
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "batch_id: too long") {
		t.Fatalf("SendBatch: %v, want the server's INVALID_ARGUMENT", err)
	}
	if streams := fake.streams(); len(streams) != 1 {
		t.Fatalf("%d streams opened, want 1", len(streams))
	}
	if err := sender.Send(context.Background(), event); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Send after the failure: %v, want the same INVALID_ARGUMENT", err)
	}
}

func TestAResourceExhaustedWithoutRetryInfoFailsTheSenderWithoutARetry(t *testing.T) {
	fake := &fakeUsage{answer: func(int, *tariffv1.UsageBatch) (*tariffv1.IngestAck, error) {
		return nil, status.Error(codes.ResourceExhausted, "a batch holds at most 2 events")
	}}
	sender, err := startFake(t, fake).NewUsageSender(tariff.SenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	event, _ := demoEvent("too-big", 0, 1_700_000_000_000)
	if _, err = sender.SendBatch(context.Background(), []*tariffv1.UsageEvent{event}, ""); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("SendBatch: %v, want the server's RESOURCE_EXHAUSTED", err)
	}
	if streams := fake.streams(); len(streams) != 1 {
		t.Fatalf("%d streams opened, want 1: waiting cannot fix a status without RetryInfo", len(streams))
	}
}

func TestSendBlocksWhileBufferEventsMaxEventsAreUnacknowledged(t *testing.T) {
	fake := &fakeUsage{answer: func(int, *tariffv1.UsageBatch) (*tariffv1.IngestAck, error) {
		return nil, nil // takes the batches, never acks
	}}
	sender, err := startFake(t, fake).NewUsageSender(tariff.SenderOptions{BatchEventsMax: 1, BufferEventsMax: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Abort()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 2 {
		event, _ := demoEvent("full", i, 1_700_000_000_000)
		if err := sender.Send(cancelled, event); err != nil {
			t.Fatalf("Send %d with room in the buffer: %v", i, err)
		}
	}
	event, _ := demoEvent("full", 2, 1_700_000_000_000)
	if err := sender.Send(cancelled, event); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send with the buffer full: %v, want it to wait (until its context ends)", err)
	}
	if held := sender.Stats().BufferedEvents; held != 2 {
		t.Fatalf("%d events held, want 2", held)
	}
}

func TestARetryPolicyWithOnlySomeFieldsSetTakesTheDefaultsForTheRest(t *testing.T) {
	fake := &fakeUsage{answer: func(stream int, batch *tariffv1.UsageBatch) (*tariffv1.IngestAck, error) {
		if stream == 1 {
			return nil, status.Error(codes.Unavailable, "server restarting")
		}
		return ackOf(batch), nil
	}}
	// Only the attempt count set: the zero ElapsedMax, backoffs and RetryableCodes are the defaults', as
	// SenderOptions' zero fields are, not "give up at once" and "retry nothing".
	sender, err := startFake(t, fake).NewUsageSender(tariff.SenderOptions{Retry: &tariff.RetryPolicy{AttemptsMax: 3}})
	if err != nil {
		t.Fatal(err)
	}
	event, _ := demoEvent("partial-policy", 0, 1_700_000_000_000)
	ack, err := sender.SendBatch(context.Background(), []*tariffv1.UsageEvent{event}, "b-1")
	if err != nil || ack.GetAccepted() != 1 {
		t.Fatalf("SendBatch after one UNAVAILABLE stream: %v, %v; want the batch resent and acked", ack, err)
	}
	if stats, err := sender.Close(context.Background()); err != nil || stats.Reconnects != 1 || stats.ResentBatches != 1 {
		t.Fatalf("Close: %+v, %v", stats, err)
	}
}

// Stream 1 refuses the first batch, stream 2 acks it and then ends with nothing outstanding (with
// OK, or broken: the connection lost while idle), stream 3 refuses the second batch, stream 4 acks
// it. With AttemptsMax 2 the sender must not add stream 3's failure to stream 1's: stream 2 acked
// and ended with nothing lost in between.
func TestAStreamEndingWithNothingOutstandingStartsTheFailureCountAfresh(t *testing.T) {
	for name, idleEnd := range map[string]error{
		"ended with OK": errEndStream,
		"broken":        status.Error(codes.Unavailable, "connection reset while idle"),
	} {
		t.Run(name, func(t *testing.T) {
			fake := &fakeUsage{answer: func(stream int, batch *tariffv1.UsageBatch) (*tariffv1.IngestAck, error) {
				switch stream {
				case 1, 3:
					return nil, status.Errorf(codes.Unavailable, "stream %d refused", stream)
				case 2:
					return ackOf(batch), idleEnd
				}
				return ackOf(batch), nil
			}}
			retry := &tariff.RetryPolicy{AttemptsMax: 2, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}
			sender, err := startFake(t, fake).NewUsageSender(tariff.SenderOptions{Retry: retry})
			if err != nil {
				t.Fatal(err)
			}
			defer sender.Abort()
			ctx := context.Background()
			first, _ := demoEvent("healthy", 0, 1_700_000_000_000)
			if _, err := sender.SendBatch(ctx, []*tariffv1.UsageEvent{first}, "b-1"); err != nil {
				t.Fatal(err)
			}
			// Until stream 2 has ended, so that b-2 goes out on stream 3.
			for tariff.StreamsEnded(sender) < 2 {
				time.Sleep(5 * time.Millisecond)
			}
			second, _ := demoEvent("healthy", 1, 1_700_000_000_000)
			if _, err := sender.SendBatch(ctx, []*tariffv1.UsageEvent{second}, "b-2"); err != nil {
				t.Fatalf("SendBatch after a healthy stream: %v", err)
			}
			stats, err := sender.Close(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var ids [][]string
			for _, batches := range fake.streams() {
				var stream []string
				for _, batch := range batches {
					stream = append(stream, batch.GetBatchId())
				}
				ids = append(ids, stream)
			}
			if fmt.Sprint(ids) != "[[b-1] [b-1] [b-2] [b-2]]" {
				t.Fatalf("batches per stream: %v", ids)
			}
			want := tariff.SenderStats{BatchesSent: 2, BatchesAcked: 2, EventsAccepted: 2, Reconnects: 3, ResentBatches: 2}
			if stats != want {
				t.Fatalf("stats = %+v, want %+v", stats, want)
			}
		})
	}
}
